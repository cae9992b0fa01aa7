"""What the service changed survives folder builds: exclusions honoured, enrolled photos carried over.

Who owns what (README "Who owns what"): the gallery folder owns the photos it holds (source
"folder"); the index owns the photos enrolled through the service (source "api", kept in its
photo store, `facesearch.index.storage.photostore`). A folder build mirrors only the folder's photos, so enrolled
ones are never touched by it. Two cases need more than that, and are handled here:

- A folder photo removed through the service (a deleted identity or face) would come back at
  the next `build-index DIR`. The removal records an `Exclusion`; a folder build leaves that
  photo (or face) out while its file is unchanged, and the exclusion lapses once the file
  changes (new bytes are a new photo) or leaves the folder.
- A rebuild (`--rebuild`, another model, another crop method or face policy) starts a new,
  empty index: the enrolled photos are embedded again from the photo store, each face found
  again by its box, and the exclusions are carried over. If a photo is missing from the store
  (a server run with `--no-keep-photos`), the rebuild is refused before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE
from facesearch.embedder.core.errors import DatasetError, IndexFormatError
from facesearch.embedder.core.model_card import sha256_file
from facesearch.embedder.pipeline import embed_photos
from facesearch.index.protocols import EmbedderLike
from facesearch.index.storage.manifest import read_manifest
from facesearch.index.storage.photostore import PhotoStore
from facesearch.index.storage.store import Box, Exclusion, IndexStore, Photo, StoredFace
from facesearch.index.storage.writer import IndexWriter
from facesearch.index.sync.scan import ScannedFile

SAME_FACE_IOU = 0.5  # a face found again overlaps its recorded box at least this much


def box_iou(a: Box | None, b: Box | None) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes (0 when either is None)."""
    if a is None or b is None:
        return 0.0
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def find_face(box: Box | None, found: list[Box | None]) -> int | None:
    """Index in `found` of the face that is `box` again (best overlap, at least SAME_FACE_IOU), or None.

    A face without a box (a pre-aligned crop: the whole photo) is the photo's only face.
    """
    if box is None:
        return 0 if len(found) == 1 and found[0] is None else None
    overlaps = [box_iou(box, f) for f in found]
    best = int(np.argmax(overlaps)) if overlaps else -1
    return best if best >= 0 and overlaps[best] >= SAME_FACE_IOU else None


# ------------------------------------------------------------------ exclusions, in a folder build


@dataclass
class ExclusionPlan:
    """How a folder build honours the exclusions: what it mirrors and which exclusions end."""

    files: list[ScannedFile]  # the scanned files to mirror (whole-photo exclusions left out)
    excluded: list[str] = field(default_factory=list)  # left out: removed through the service, unchanged
    lapsed: list[str] = field(default_factory=list)  # paths whose exclusions end (file changed or gone)
    faces: dict[str, list[Exclusion]] = field(default_factory=dict)  # single-face exclusions still in force

    def drop_faces(self, path: str, sha256: str, kept: list[tuple[int, Box | None]],
                   vectors: np.ndarray) -> tuple[list[tuple[int, Box | None]], np.ndarray]:
        """`kept` faces of a photo embedded again, without those removed through the service."""
        gone = {i for e in self.faces.get(path, []) if e.sha256 == sha256
                if (i := find_face(e.box, [box for _, box in kept])) is not None}
        if not gone:
            return kept, vectors
        keep = [i for i in range(len(kept)) if i not in gone]
        return [kept[i] for i in keep], vectors[keep]


def plan_exclusions(root: Path, files: list[ScannedFile], exclusions: list[Exclusion]) -> ExclusionPlan:
    """Split `files` by the exclusions in force (see the module notes); reads a file only if it changed."""
    by_path: dict[str, list[Exclusion]] = {}
    for e in exclusions:
        by_path.setdefault(e.path, []).append(e)
    plan = ExclusionPlan([])
    seen = set()
    for f in files:
        seen.add(f.path)
        rows = by_path.get(f.path)
        if rows is None:
            plan.files.append(f)
            continue
        e = rows[0]
        unchanged = (e.size, e.mtime_ns) == (f.size, f.mtime_ns) or _digest(root / f.path) == e.sha256
        if not unchanged:
            plan.lapsed.append(f.path)
            plan.files.append(f)
        elif any(r.face is None for r in rows):
            plan.excluded.append(f.path)
        else:
            plan.faces[f.path] = rows
            plan.files.append(f)
    plan.lapsed += sorted(p for p in by_path if p not in seen)
    return plan


def _digest(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


# ------------------------------------------------------------------ enrolled photos, in a rebuild


@dataclass
class Carried:
    """What a rebuild carried over from the index it replaces."""

    exclusions: list[Exclusion] = field(default_factory=list)
    photos: int = 0  # enrolled photos embedded again
    faces: int = 0  # their faces found again and staged
    lost: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of enrolled faces not found again


def carry_enrolled(index_dir: Path, writer: IndexWriter, embedder: EmbedderLike, *, workers: int | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> Carried:
    """Stage in a fresh `writer` the previous index's enrolled photos (embedded again) and exclusions.

    Call it before the writer commits: the previous generation's files are still on disk.

    Raises:
        DatasetError: an enrolled photo is not in the photo store (nothing has been staged then).
    """
    previous = _previous(index_dir)
    if previous is None:
        return Carried()
    photos, faces, exclusions = previous
    carried = Carried(exclusions)
    writer.exclude(exclusions)
    store = PhotoStore(index_dir)
    files = {path: store.path_of(path) for path in photos}
    missing = sorted(p for p, f in files.items() if f is None or not f.is_file())
    if missing:
        names = sorted({photos[p].identity for p in missing})
        raise DatasetError(
            f"{len(missing)} photo(s) enrolled through the service (identities {', '.join(names[:5])}"
            f"{', ...' if len(names) > 5 else ''}) are not in the index's photo store '{store.root}' (the server "
            "ran with --no-keep-photos), so a rebuild cannot embed them again and would lose them: delete those "
            "identities through the service (DELETE /v1/identities/NAME), rebuild, then enrol them again; "
            "nothing was written")
    paths = sorted(photos)
    for batch in embed_photos([files[p] for p in paths], embedder, batch_size=batch_size, policy="all",
                              workers=workers):
        for r in batch:
            path = paths[r.position]
            if r.error is not None:
                carried.lost.append((path, f"enrolled photo unreadable in the photo store: {r.error.reason}"))
                continue
            _stage_photo(writer, photos[path], faces.get(path, []), r.kept, r.vectors, carried)
    return carried


def _stage_photo(writer: IndexWriter, photo: Photo, wanted: list[StoredFace], kept: list[tuple[int, Box | None]],
                 vectors: np.ndarray | None, carried: Carried) -> None:
    chosen = []
    for face in wanted:
        i = find_face(face.box, [box for _, box in kept])
        if i is None:
            carried.lost.append((photo.path, f"the enrolled face at {face.box} was not found again"))
        elif i not in chosen:
            chosen.append(i)
    writer.add_photo(replace(photo, n_faces=len(kept)), [kept[i] for i in chosen],
                     vectors[chosen] if chosen else np.empty((0, writer.manifest.dim), np.float32))
    carried.photos += 1
    carried.faces += len(chosen)


def _previous(index_dir: Path) -> tuple[dict[str, Photo], dict[str, list[StoredFace]], list[Exclusion]] | None:
    """The replaced index's enrolled photos, their faces and its exclusions (None: none readable)."""
    try:
        manifest = read_manifest(index_dir)
        store = IndexStore.open_reader(index_dir / manifest.metadata_file, manifest.generation)
    except (IndexFormatError, FileNotFoundError, OSError):
        return None  # no index, or a damaged one: there is nothing that can be carried over
    try:
        photos = store.photos("api")
        return photos, store.faces_of(photos), store.exclusions()
    except IndexFormatError:
        return None
    finally:
        store.close()


def exclusion_of(photo: Photo, face: StoredFace | None = None) -> Exclusion:
    """The exclusion recording that `photo` (or one face of it) was removed through the service."""
    return Exclusion(photo.path, photo.size, photo.mtime_ns, photo.sha256,
                     None if face is None else face.face, None if face is None else face.box)

