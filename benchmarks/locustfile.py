"""The Locust users benchmarks/load.py runs headless: 90% query, 8% enrol, 2% remove, over real LFW photos.

Configured by environment variables (load.py sets them): FACESEARCH_LOAD_LFW (the LFW folder),
FACESEARCH_LOAD_PEOPLE (how many people's photos to send), FACESEARCH_LOAD_OUT (a folder: each
Locust process writes `ledger-<pid>.json`, what its writes got back, and `requests-<pid>.json`,
(end time, endpoint, milliseconds, status) of every request, when the run stops).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import time
from pathlib import Path

from locust import HttpUser, events, task

sys.path.insert(0, str(Path(__file__).resolve().parent))

from traffic import lfw_photos  # noqa: E402

OUT = Path(os.environ.get("FACESEARCH_LOAD_OUT", "."))
PHOTOS = lfw_photos(Path(os.environ["FACESEARCH_LOAD_LFW"]), int(os.environ.get("FACESEARCH_LOAD_PEOPLE", "50")))
LEDGER: dict[str, dict] = {}  # identity -> {"photos", "state", "face_ids", "removal"}
REQUESTS: list[tuple[float, str, float, int]] = []
_names = itertools.count()


@events.request.add_listener
def _record(request_type, name, response_time, response_length, response=None, exception=None, **kwargs):
    status = getattr(response, "status_code", 0) if exception is None or response is not None else 0
    REQUESTS.append((time.time(), name, float(response_time), int(status or 0)))


@events.quitting.add_listener
def _dump(environment, **kwargs):
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"ledger-{os.getpid()}.json").write_text(json.dumps(LEDGER))
    (OUT / f"requests-{os.getpid()}.json").write_text(json.dumps(REQUESTS))


class FaceUser(HttpUser):
    """One client, one request at a time, no think time (the server is driven as hard as the users can)."""

    def on_start(self):
        self.rng = random.Random(f"{os.getpid()}-{id(self)}")
        self.mine: list[str] = []  # identities this user enrolled and may remove

    @task(90)
    def query(self):
        person = self.rng.choice(PHOTOS)
        with self.client.post("/v1/query", files={"photo": ("q.jpg", person[-1], "image/jpeg")}, name="/v1/query",
                              catch_response=True) as r:
            if r.status_code == 200:
                r.success()

    @task(8)
    def enrol(self):
        identity = f"load{os.getpid()}x{next(_names):06d}"
        photos = self.rng.choice(PHOTOS)[:1]
        entry = LEDGER[identity] = {"photos": len(photos), "state": "sent", "face_ids": [], "removal": None}
        with self.client.post(f"/v1/identities/{identity}/faces", name="/v1/identities/[name]/faces",
                              files=[("photos", ("p.jpg", photos[0], "image/jpeg"))], catch_response=True) as r:
            if r.status_code == 201:
                entry.update(state="acked", face_ids=sorted(f["id"] for f in r.json()["faces"]))
                self.mine.append(identity)
                r.success()
            else:
                entry["state"] = "refused" if 0 < r.status_code < 500 else "uncertain"

    @task(2)
    def remove(self):
        if not self.mine:
            return
        identity = self.mine.pop(self.rng.randrange(len(self.mine)))
        LEDGER[identity]["removal"] = "sent"
        with self.client.delete(f"/v1/identities/{identity}", name="/v1/identities/[name]", catch_response=True) as r:
            if r.status_code == 200:
                LEDGER[identity]["removal"] = "acked"
                r.success()
            else:
                LEDGER[identity]["removal"] = "uncertain" if not 0 < r.status_code < 500 else None
