#!/usr/bin/env bash
# The wheel check: test the product as a user gets it, not the editable checkout that `make test` runs (an
# editable install cannot notice a wheel without its web page, or one that installs the wrong top-level names).
#
#   1. build the sdist and the wheel (`python -m build`; the wheel is built from the sdist) from a copy of the
#      files git knows of (tracked, and untracked but not ignored: what a clone would have);
#   2. the wheel holds facesearch/ and its dist-info, nothing else, and ships the web page and py.typed;
#   3. a fresh virtual environment outside the checkout gets the wheel alone, no extras (`import tensorflow` and
#      `import fastapi` fail there); then, from another directory:
#   4. `import facesearch` comes from that environment;
#   5. a tiny gallery of LFW photos (3 people, 2 photos each, a third photo of each as a probe);
#   6. the CLI with an empty cache: the first build-index converts the default model by itself (no TensorFlow),
#      then query --json names each probe's person;
#   7. the same environment gets `<wheel>[serve]` (still no TensorFlow);
#   8. the service: `facesearch serve` on loopback; GET / and the static files the page references, and
#      POST /v1/query names the probe's person;
#   9. the Python API (facesearch.open / add / enrol / remove / search, verify, detect, embed).
#
# Usage: .ci/check_wheel.sh (`.ci/run` calls it after `make test`, which makes .venv). About 35 s with a warm
# pip cache. LFW: $FACESEARCH_LFW/images_deepfunneled, else ../shared/lfw/images_deepfunneled beside the
# checkout; without it steps 5-9 are skipped (and it says so): the file list and the import are still checked.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DEV_BIN=$REPO/.venv/bin
WORK=$(mktemp -d "${TMPDIR:-/tmp}/facesearch-wheel.XXXXXX")
SERVER_PID=
unset PYTHONPATH   # nothing may reach the checkout but the wheel itself

step() { printf '== check_wheel [%3ds] %s\n' "$SECONDS" "$*"; }
fail() { printf 'check_wheel: FAIL: %s\n' "$*" >&2; exit 1; }
cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
# Run a command quietly; on failure show the end of what it said.
quiet() {
    local log=$WORK/quiet.log
    if ! "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        fail "command failed: $*"
    fi
}

[[ -x $DEV_BIN/python ]] || fail "no $DEV_BIN/python: run 'make test' (it creates .venv) first"
case $WORK in "$REPO"/*) fail "temporary folder $WORK lies inside the checkout" ;; esac

# --- 1. build --------------------------------------------------------------------------------------------------
step "1. build the sdist and the wheel (python -m build)"
"$DEV_BIN/python" -c 'import build' 2>/dev/null || quiet "$DEV_BIN/python" -m pip install --quiet "build>=1"
# A copy of what git knows of, so no build output or stale facesearch.egg-info of the checkout gets in (and
# nothing is written into the checkout).
mkdir -p "$WORK/src" "$WORK/dist"
git -C "$REPO" ls-files -z --cached --others --exclude-standard \
    | (cd "$REPO" && while IFS= read -r -d '' f; do [[ -f $f ]] && printf '%s\0' "$f"; done) \
    | tar -C "$REPO" --null -T - -cf - | tar -C "$WORK/src" -xf -
quiet "$DEV_BIN/python" -m build --outdir "$WORK/dist" "$WORK/src"
shopt -s nullglob
wheels=("$WORK"/dist/*.whl)
sdists=("$WORK"/dist/*.tar.gz)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 && ${#sdists[@]} -eq 1 ]] || fail "expected one wheel and one sdist, got: $(ls "$WORK/dist")"
WHEEL=${wheels[0]}
step "   built $(basename "${sdists[0]}") and $(basename "$WHEEL")"

# --- 2. the wheel's file list ----------------------------------------------------------------------------------
step "2. the wheel's file list: facesearch/ and its dist-info only; the web page and py.typed in it"
"$DEV_BIN/python" - "$WHEEL" <<'EOF'
import sys, zipfile
from pathlib import Path

wheel = Path(sys.argv[1])
version = wheel.name.split("-")[1]
names = zipfile.ZipFile(wheel).namelist()
allowed = ("facesearch/", f"facesearch-{version}.dist-info/")
stray = sorted(n for n in names if not n.startswith(allowed))
needed = ["facesearch/__init__.py", "facesearch/py.typed", "facesearch/service/static/index.html",
          "facesearch/service/static/app.js", "facesearch/service/static/app.css",
          f"facesearch-{version}.dist-info/METADATA", f"facesearch-{version}.dist-info/entry_points.txt"]
missing = [n for n in needed if n not in names]
problems = []
if stray:
    problems.append(f"{len(stray)} entries outside {' and '.join(allowed)} (wrong top-level names?): "
                    + ", ".join(stray[:20]) + (" ..." if len(stray) > 20 else ""))
if missing:
    problems.append("missing from the wheel: " + ", ".join(missing)
                    + " (the package-data in pyproject.toml, [tool.setuptools.package-data])")
if problems:
    sys.exit(f"check_wheel: FAIL: {wheel.name}:\n  " + "\n  ".join(problems))
print(f"   {len(names)} entries, all under {allowed[0]} or {allowed[1]}; web page and py.typed present")
EOF

# --- 3. a fresh environment with the wheel ---------------------------------------------------------------------
step "3. a fresh virtual environment outside the checkout: pip install '<wheel>' (no extras)"
VENV=$WORK/venv
quiet "$DEV_BIN/python" -m venv "$VENV"
quiet "$VENV/bin/python" -m pip install --quiet "$WHEEL"
PY=$VENV/bin/python
for module in tensorflow keras tf2onnx fastapi; do
    "$PY" -c "import $module" 2>/dev/null && fail "'import $module' works after a plain install of the wheel: a core dependency pulled it in"
done
echo "   tensorflow, keras, tf2onnx, fastapi: not importable (as a plain install should be)"
FS=$VENV/bin/facesearch
[[ -x $FS ]] || fail "the wheel installed no 'facesearch' command in $VENV/bin"
RUN=$WORK/run
mkdir -p "$RUN"
cd "$RUN"   # from here on, not the repository: only the installed wheel can be imported

step "4. import facesearch: from the new environment, not the checkout"
where=$("$PY" -c "import facesearch; print(facesearch.__file__)")
echo "   facesearch.__file__ = $where"
case $where in
    "$VENV"/*) ;;
    *) fail "facesearch imported from $where, not from the new environment $VENV" ;;
esac

# --- photos ----------------------------------------------------------------------------------------------------
if [[ -n ${FACESEARCH_LFW:-} ]]; then LFW=$FACESEARCH_LFW/images_deepfunneled; else LFW=$REPO/../shared/lfw/images_deepfunneled; fi
if [[ ! -d $LFW ]]; then
    step "LFW not found at $LFW (set FACESEARCH_LFW): SKIPPING the photo steps (model, API, CLI, service)"
    step "wheel check passed (file list and import only; no photos)"
    exit 0
fi

export FACESEARCH_CACHE=$WORK/cache   # nothing converted earlier can help: this is a user's first run

step "5. a tiny gallery from $LFW: 2 photos each of the 3 people with the most, a third of each as a probe"
# Prints "name" per person, probes/<name>.jpg and gallery/<name>/ made.
mapfile -t PEOPLE < <("$PY" - "$LFW" <<'EOF'
import shutil, sys
from pathlib import Path

lfw = Path(sys.argv[1])
people = sorted((p for p in lfw.iterdir() if p.is_dir()), key=lambda p: (-sum(1 for _ in p.glob("*.jpg")), p.name))
chosen = [p for p in people if len(list(p.glob("*.jpg"))) >= 3][:3]
if len(chosen) < 3:
    sys.exit(f"check_wheel: FAIL: fewer than 3 people with 3 photos in {lfw}")
Path("probes").mkdir()
for person in chosen:
    photos = sorted(person.glob("*.jpg"))
    (Path("gallery") / person.name).mkdir(parents=True)
    for photo in photos[:2]:
        shutil.copy(photo, Path("gallery") / person.name / photo.name)
    shutil.copy(photos[2], Path("probes") / f"{person.name}.jpg")
    print(person.name)
EOF
)
[[ ${#PEOPLE[@]} -eq 3 ]] || fail "could not make the gallery"
X=${PEOPLE[0]}
echo "   people: ${PEOPLE[*]}; probe of $X: probes/$X.jpg"

step "6. the CLI, first run on an empty cache: facesearch build-index gallery --index idx2 converts the default model"
"$FS" build-index gallery --index idx2 >build.log 2>&1 || { tail -n 40 build.log >&2; fail "facesearch build-index failed"; }
grep -q "converting" build.log || { cat build.log >&2; fail "build-index did not say it converts the default model"; }
grep -E "converting|\[[0-9]/[0-9]\]" build.log | sed 's/^/   /'
"$FS" models list | sed 's/^/   /'
for person in "${PEOPLE[@]}"; do
    "$FS" query "probes/$person.jpg" --index idx2 --json >query.json || { cat query.json >&2; fail "facesearch query failed"; }
    "$PY" - "$person" query.json <<'EOF'
import json, sys

x, answer = sys.argv[1], json.load(open(sys.argv[2]))
faces = answer.get("faces") or []
if not faces or faces[0].get("identity") != x:
    sys.exit(f"check_wheel: FAIL: facesearch query: faces[0].identity is "
             f"{faces[0].get('identity') if faces else 'absent (no face)'!r}, not {x!r}:\n{json.dumps(answer)[:2000]}")
print(f"   query probes/{x}.jpg: {x} (score {faces[0]['matches'][0]['score']:.3f})")
EOF
done

step "7. the same environment gets '<wheel>[serve]'"
quiet "$PY" -m pip install --quiet "$WHEEL[serve]"
"$PY" -c "import tensorflow" 2>/dev/null && fail "TensorFlow is importable after installing [serve]: the extra pulled it in"
echo "   fastapi $("$PY" -c 'import fastapi; print(fastapi.__version__)'), no TensorFlow"

step "8. the service: facesearch serve --index idx2 on 127.0.0.1; GET /, its static files, POST /v1/query"
PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
URL=http://127.0.0.1:$PORT
"$FS" serve --index idx2 --host 127.0.0.1 --port "$PORT" >serve.log 2>&1 &
SERVER_PID=$!
started=$SECONDS
for ((i = 0; i < 120; i++)); do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat serve.log >&2; fail "facesearch serve exited before answering"; }
    curl -fsS -o /dev/null "$URL/v1/health" 2>/dev/null && break
    sleep 0.5
done
curl -fsS -o /dev/null "$URL/v1/health" || { tail -n 40 serve.log >&2; fail "facesearch serve did not answer on $URL within 60 s"; }
echo "   answering on $URL after $((SECONDS - started))s"

code=$(curl -sS -o page.html -w '%{http_code} %{content_type}' "$URL/")
[[ $code == "200 text/html"* ]] || fail "GET / answered '$code', not '200 text/html'"
grep -qi '<html' page.html || fail "GET / is not an HTML page"
mapfile -t ASSETS < <(grep -oE '(src|href)="/static/[^"]+"' page.html | sed -E 's/^(src|href)="//; s/"$//' | sort -u)
[[ ${#ASSETS[@]} -ge 2 ]] || fail "the page references ${#ASSETS[@]} static files (expected app.js and app.css): ${ASSETS[*]}"
for asset in "${ASSETS[@]}"; do
    size=$(curl -fsS -o asset.out -w '%{size_download}' "$URL$asset") || fail "GET $asset failed (the page references it)"
    [[ $size -gt 0 ]] || fail "GET $asset is empty"
    echo "   GET $asset: 200, $size bytes"
done
echo "   GET /: 200 text/html"

curl -fsS -o service.json -F "photo=@probes/$X.jpg" "$URL/v1/query" || { tail -n 40 serve.log >&2; fail "POST /v1/query failed"; }
"$PY" - "$X" service.json <<'EOF'
import json, sys

x, answer = sys.argv[1], json.load(open(sys.argv[2]))
faces = answer.get("faces") or []
if not faces or faces[0].get("identity") != x:
    sys.exit(f"check_wheel: FAIL: POST /v1/query: faces[0].identity is "
             f"{faces[0].get('identity') if faces else 'absent (no face)'!r}, not {x!r}:\n{json.dumps(answer)[:2000]}")
print(f"   POST /v1/query: {x} (score {faces[0]['matches'][0]['score']:.3f})")
EOF

kill "$SERVER_PID"
rc=0
wait "$SERVER_PID" || rc=$?
SERVER_PID=
[[ $rc -eq 0 || $rc -eq 143 ]] || { tail -n 40 serve.log >&2; fail "facesearch serve exited with $rc on SIGTERM"; }
echo "   server stopped (exit $rc)"

step "9. the Python API: open, add, enrol, remove, search, verify, detect, embed"
"$PY" -c "import facesearch, sys; missing = [n for n in ('open', 'verify', 'detect', 'embed') if not hasattr(facesearch, n)]; \
sys.exit(f'check_wheel: FAIL: the installed facesearch lacks the Python API: facesearch.{\", facesearch.\".join(missing)} (see the README)') if missing else None"
cat >api_check.py <<'EOF'
"""The README's Python API, run against the installed wheel."""
import sys
from pathlib import Path

import numpy as np

import facesearch

x, other = sys.argv[1], sys.argv[2]


def show(what, value):
    text = repr(value) if not isinstance(value, str) else value
    print(f"   {what}: {text if len(text) <= 160 else text[:157] + '...'}")


probe_x, probe_other = f"probes/{x}.jpg", f"probes/{other}.jpg"
gallery_photo_x = sorted(Path("gallery", x).glob("*.jpg"))[0]

gallery = facesearch.open("people-index")
report = gallery.add("gallery/")
show("add", report)
show("enrol", gallery.enrol(probe_other, "Someone New"))
show("remove", gallery.remove("Someone New"))
faces = gallery.search(probe_x, k=5)
for face in faces:
    print("   search:", face.box, face.identity, face.score)
assert faces, f"search found no face in {probe_x}"
assert faces[0].identity == x, f"search: the top identity of {probe_x} is {faces[0].identity!r}, not {x!r}"

verdict = facesearch.verify(probe_x, gallery_photo_x)
show("verify", verdict)
assert verdict.same is True, f"verify({probe_x}, {gallery_photo_x}).same is {verdict.same!r}, not True"

found = facesearch.detect(probe_x)
print(f"   detect: {len(found)} face(s)")
assert len(found) >= 1, f"detect found no face in {probe_x}"

embedded = facesearch.embed([probe_x])
print(f"   embed: {len(embedded)} face(s)")
assert len(embedded) >= 1, f"embed found no face in {probe_x}"
for face in embedded:
    norm = float(np.linalg.norm(face.vector))
    assert abs(norm - 1.0) < 1e-3, f"embed: a vector's norm is {norm}, not 1"
print("   API ok")
EOF
"$PY" api_check.py "$X" "${PEOPLE[2]}" || fail "the Python API example (api_check.py above) failed"

step "wheel check passed: $(basename "$WHEEL") in ${SECONDS}s"
