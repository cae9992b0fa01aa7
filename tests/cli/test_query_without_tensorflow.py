"""`facesearch query` in a fresh process must never import TensorFlow (start-up cost ~2 s)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from clitools import invoke_json


def test_query_never_imports_tensorflow(faces, model_dir, tmp_path, without_tensorflow):
    index = tmp_path / "index"
    invoke_json("build-index", "--aligned", faces / "gallery", "--model", model_dir, "--index", index)
    probe = faces / "probes" / "id_07" / "033.png"

    # 1. In a fresh interpreter: run the command, then look at what was imported.
    script = textwrap.dedent(f"""
        import sys
        from facesearch.cli.main import app
        try:
            app(["query", "--aligned", {str(probe)!r}, "--index", {str(index)!r}, "--json"])
        except SystemExit as e:
            assert not e.code, e.code
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx"))
        print("LOADED", loaded)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout, out.stdout
    assert '"verdict": "id_07"' in out.stdout

    # 2. The installed console script, with a `tensorflow` that fails loudly if imported.
    out = without_tensorflow("query", "--aligned", probe, "--index", index)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("id_07"), out.stdout
