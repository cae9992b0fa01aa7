"""`facesearch query` in a fresh process must never import TensorFlow (start-up cost ~2 s)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

from clitools import invoke_json


def test_query_never_imports_tensorflow(faces, model_dir, tmp_path):
    index = tmp_path / "index"
    invoke_json("build-index", "--aligned", faces / "gallery", "--model", model_dir, "--index", index)
    probe = faces / "probes" / "id_07" / "033.png"

    # 1. In a fresh interpreter: run the command, then look at what was imported.
    script = textwrap.dedent(f"""
        import sys
        from cli.main import app
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
    poison = tmp_path / "poison" / "tensorflow"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('tensorflow was imported on the query path')\n")
    exe = shutil.which("facesearch", path=os.path.dirname(sys.executable))
    assert exe, "the facesearch console script is not installed next to this Python"
    env = os.environ | {"PYTHONPATH": str(poison.parent)}
    out = subprocess.run([exe, "query", "--aligned", str(probe), "--index", str(index)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("id_07"), out.stdout
