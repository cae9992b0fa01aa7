"""`facesearch compact`: merge an index's segments and drop removed faces (also upgrades old indexes).

Writes go through `facesearch.index.storage.writer.IndexWriter` like any build; no photo is read or embedded.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from facesearch.cli.options import IndexOpt, JsonOpt, emit, friendly_errors, index_dir


@friendly_errors
def compact(
    index: IndexOpt = None,
    index_type: Annotated[Optional[str], typer.Option("--index-type", help="Rewrite the segments as this type: auto, flat, hnsw or ivf (default: keep the index's).")] = None,
    memory_budget: Annotated[Optional[str], typer.Option("--memory-budget", help="Bytes the search structures may take, e.g. 8G or 512M (default: keep the index's).")] = None,
    target_recall: Annotated[Optional[float], typer.Option("--target-recall", min=0.5, max=1.0, help="Recall@10 against exact search the merged segment is tuned to (default: keep the index's).")] = None,
    json_out: JsonOpt = False,
):
    """Merge the index's segments into one, dropping removed faces; choose and tune its type for the whole size."""
    from facesearch.cli.output import format_compact

    emit(run_compact(index_dir(index), index_type=index_type, memory_budget=memory_budget, target_recall=target_recall),
         json_out, format_compact)


def run_compact(index, *, index_type: str | None = None, memory_budget: str | None = None,
                target_recall: float | None = None) -> dict:
    """Compact (and, for an old format, upgrade) the index at `index`; a summary of before and after."""
    import dataclasses
    import time

    from facesearch.cli.options import parse_bytes
    from facesearch.index import open_writer, read_manifest
    from facesearch.index.storage.generation import build_lock
    from facesearch.index.storage.manifest import read_manifest_data
    from facesearch.index.storage.upgrade import upgrade_if_old

    start = time.perf_counter()
    read_manifest_data(index)  # a missing index is an error here, not a folder to create
    with build_lock(index.expanduser().resolve()):
        upgraded = upgrade_if_old(index.expanduser().resolve())
    before = read_manifest(index)
    policy = before.policy
    if index_type is not None or memory_budget is not None or target_recall is not None:
        policy = dataclasses.replace(policy, index_type=index_type or policy.index_type,
                                     memory_budget=parse_bytes(memory_budget) if memory_budget else policy.memory_budget,
                                     target_recall=target_recall or policy.target_recall)
    with open_writer(index, card=before.model_card, model_dir=before.model_dir, policy=policy) as writer:
        result = writer.compact(force=policy != before.policy)
        after = writer.manifest
    return {"index_dir": str(index.expanduser().resolve()), "upgraded": upgraded, "written": result.written,
            "generation": after.generation, "faces": after.faces,
            "before": {"segments": len(before.segments), "stored": before.stored, "removed": before.dead,
                       "types": [s.kind for s in before.segments]},
            "after": {"segments": len(after.segments), "stored": after.stored, "removed": after.dead,
                      "types": [s.kind for s in after.segments], "specs": [s.spec for s in after.segments]},
            "seconds": round(time.perf_counter() - start, 3)}
