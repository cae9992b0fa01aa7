"""Checkpoint names: stream positions that sort epochs and mid-epoch steps together."""

from facesearch.train.checkpoints import Position, latest_checkpoint, list_checkpoints, position_of


def test_names_round_trip_and_sort_by_stream_position(tmp_path):
    assert Position(3).file_name == "epoch-003.keras"
    assert Position(3, 120).file_name == "epoch-003-batch-000120.keras"
    assert Position.at_step(3 * 500 + 120, 500) == Position(3, 120) and Position(3, 120).step(500) == 1620
    assert position_of("epoch-003-batch-000120.keras") == Position(3, 120)
    assert position_of("model.keras") is None
    (tmp_path / "checkpoints").mkdir()
    # As text, epoch-002-batch-... sorts before epoch-002.keras although it is later in the stream.
    for name in ("epoch-002.keras", "epoch-002-batch-000010.keras", "epoch-001-batch-000400.keras", "notes.keras"):
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    assert [p.name for _, p in list_checkpoints(tmp_path)] == [
        "epoch-001-batch-000400.keras", "epoch-002.keras", "epoch-002-batch-000010.keras"]
    assert latest_checkpoint(tmp_path)[0] == Position(2, 10)
    assert latest_checkpoint(tmp_path / "empty") is None
