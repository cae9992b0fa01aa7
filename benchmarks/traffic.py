"""What the load and crash runs share: a `facesearch serve` process group, a ledger of writes, the audit.

The ledger records every enrolment and removal sent, with what the server answered: acknowledged
(2xx: it must be there, or gone, after any crash), refused (4xx: it must never appear), or uncertain
(no answer: the server died, or a 5xx: it may be there or not, but whole). `audit` checks the index
against it over HTTP and on disk (the index opens, its vectors match its rows, every enrolled photo's
file is in the photo store). Used by benchmarks/crash.py, benchmarks/load.py and their tests.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FACESEARCH = shutil.which("facesearch", path=os.path.dirname(sys.executable)) or "facesearch"
DEFAULT_LFW = Path(os.environ.get("FACESEARCH_LFW") or Path(__file__).resolve().parents[2] / "shared" / "lfw")


def lfw_photos(lfw: Path, people: int, per: int = 2) -> list[list[bytes]]:
    """The first `per` photos of the first `people` LFW people with at least `per` photos, as bytes."""
    root = lfw / "images_deepfunneled" if (lfw / "images_deepfunneled").is_dir() else lfw
    out = []
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(person.glob("*.jpg"))
        if len(files) >= per:
            out.append([f.read_bytes() for f in files[:per]])
            if len(out) == people:
                break
    if not out:
        raise FileNotFoundError(f"no LFW photos under '{root}' (set FACESEARCH_LFW)")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`facesearch serve` in a process group of its own (the workers too), so that it can be killed whole."""

    def __init__(self, index: Path, model: Path | None, log: Path, *args: str, timeout: float = 180.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out = open(log, "ab")
        command = [FACESEARCH, "serve", "--index", str(index), "--port", str(self.port), *args]
        if model is not None:
            command += ["--model", str(model)]
        started = time.perf_counter()
        self.process = subprocess.Popen(command, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"facesearch serve exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"facesearch serve did not answer in {timeout} s:\n{self.tail()}")
            time.sleep(0.1)
        self.start_seconds = time.perf_counter() - started

    def tail(self, n: int = 4000) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")[-n:]

    def kill(self) -> None:
        """SIGKILL to every process of the server (kill -9: no clean-up of any kind)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(60)
        self._out.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(60)
        self._out.close()


# ------------------------------------------------------------------ the ledger


@dataclass
class Enrolment:
    identity: str
    photos: int  # faces the request enrols (one per photo), all in one commit or none
    state: str = "sent"  # sent -> acked | refused | uncertain
    face_ids: list[int] = field(default_factory=list)
    removal: str | None = None  # None, or sent -> acked | uncertain (a removal of this identity)


class Ledger:
    """Every write sent and what came back; thread-safe."""

    def __init__(self):
        self.enrolments: dict[str, Enrolment] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._next = 0

    def new_identity(self, prefix: str) -> str:
        with self._lock:
            self._next += 1
            return f"{prefix}{self._next:06d}"

    def removable(self, rng: random.Random) -> Enrolment | None:
        with self._lock:
            choices = [e for e in self.enrolments.values() if e.state == "acked" and e.removal is None]
            if not choices:
                return None
            e = rng.choice(choices)
            e.removal = "sent"
            return e

    def error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)

    def counts(self) -> dict:
        es = list(self.enrolments.values())
        return {"enrolments_acked": sum(e.state == "acked" for e in es),
                "enrolments_refused": sum(e.state == "refused" for e in es),
                "enrolments_uncertain": sum(e.state == "uncertain" for e in es),
                "removals_acked": sum(e.removal == "acked" for e in es),
                "removals_uncertain": sum(e.removal == "uncertain" for e in es)}


def enrol(client, ledger: Ledger, prefix: str, photos: list[bytes]) -> tuple[str, float]:
    """POST one enrolment of `photos` under a new identity; record it. Returns (outcome, seconds)."""
    import httpx

    e = Enrolment(ledger.new_identity(prefix), len(photos))
    ledger.enrolments[e.identity] = e
    started = time.perf_counter()
    try:
        r = client.post(f"/v1/identities/{e.identity}/faces",
                        files=[("photos", (f"p{i}.jpg", p, "image/jpeg")) for i, p in enumerate(photos)])
    except httpx.HTTPError:
        e.state = "uncertain"
        return "no answer", time.perf_counter() - started
    seconds = time.perf_counter() - started
    if r.status_code == 201:
        e.face_ids = sorted(f["id"] for f in r.json()["faces"])
        e.state = "acked"
    elif r.status_code < 500:
        e.state = "refused"
    else:
        e.state = "uncertain"
        if r.status_code != 503:
            ledger.error(f"enrol {e.identity}: {r.status_code} {r.text[:200]}")
    return str(r.status_code), seconds


def remove(client, ledger: Ledger, rng: random.Random) -> tuple[str, float] | None:
    """DELETE an acknowledged identity (None if there is none yet); record it."""
    import httpx

    e = ledger.removable(rng)
    if e is None:
        return None
    started = time.perf_counter()
    try:
        r = client.delete(f"/v1/identities/{e.identity}")
    except httpx.HTTPError:
        e.removal = "uncertain"
        return "no answer", time.perf_counter() - started
    seconds = time.perf_counter() - started
    if r.status_code == 200:
        e.removal = "acked"
    else:
        e.removal = "uncertain" if r.status_code >= 500 else None  # 4xx: not removed, stays removable
        if r.status_code != 503:
            ledger.error(f"remove {e.identity}: {r.status_code} {r.text[:200]}")
    return str(r.status_code), seconds


# ------------------------------------------------------------------ the audit


def audit(url: str, index: Path, ledger: Ledger, key: str | None = None) -> dict:
    """Check the index against the ledger, over HTTP and on disk. Returns the problems found (empty lists: none).

    - every acknowledged enrolment not removed since: its identity is there with exactly its face ids;
    - every acknowledged removal: the identity is gone (404);
    - every refused enrolment: absent; every uncertain one: absent, or there with all its faces (never part);
    - on disk: the index opens (its vector counts match its live rows), every live vector reads back,
      and every enrolled photo's file is in the photo store.
    """
    import httpx

    from facesearch.index import GalleryIndex
    from facesearch.index.storage.photostore import PhotoStore

    out = {"lost": [], "resurrected": [], "half": [], "refused_present": [], "uncertain_present": 0,
           "uncertain_absent": 0, "disk": []}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=url, timeout=60, trust_env=False, headers=headers) as c:
        for e in list(ledger.enrolments.values()):
            r = c.get(f"/v1/identities/{e.identity}")
            present = r.status_code == 200
            ids = sorted(f["id"] for p in r.json()["photos"] for f in p["faces"]) if present else []
            if r.status_code not in (200, 404):
                out["disk"].append(f"GET {e.identity}: {r.status_code} {r.text[:200]}")
            if e.removal == "acked":
                if present:
                    out["resurrected"].append(e.identity)
            elif e.state == "acked" and e.removal is None:
                if ids != e.face_ids:
                    out["lost"].append(f"{e.identity}: acknowledged {e.face_ids}, found {ids}")
            elif e.state == "refused":
                if present:
                    out["refused_present"].append(e.identity)
            elif e.state == "uncertain" or e.removal == "uncertain":
                if present and len(ids) != (e.photos if e.state == "uncertain" else len(e.face_ids)):
                    out["half"].append(f"{e.identity}: {len(ids)} of {e.photos} faces")
                out["uncertain_present" if present else "uncertain_absent"] += 1
    try:
        with GalleryIndex.open(index) as g:
            ids = g.ids()
            g.vectors(ids)
            records = g.records(ids)
            store = PhotoStore(index)
            for r in records:
                stored = store.path_of(r.path)
                if stored is not None and not stored.is_file():
                    out["half"].append(f"face {r.id}: its photo {r.path} is not in the photo store")
    except Exception as e:  # noqa: BLE001 - any failure to read the index back is a finding
        out["disk"].append(f"{type(e).__name__}: {e}")
    return out


def audit_failed(result: dict) -> bool:
    return any(result[k] for k in ("lost", "resurrected", "half", "refused_present", "disk"))

