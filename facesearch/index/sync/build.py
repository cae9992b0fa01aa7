"""Build or update a gallery index from a folder of `<identity>/<photo>` images.

Incremental by default: only new or changed photos are read and embedded; photos whose size
and mtime are unchanged are not read at all; a changed size or mtime with the same sha256 only
refreshes the metadata; a photo moved or copied to another path keeps its stored vectors (and
their ids). A commit writes only what changed: new vectors as a new segment, removed ones as
tombstones, the changed metadata rows (see `facesearch.index.storage.writer`).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE, reader_threads
from facesearch.embedder.core.errors import DatasetError, IndexFormatError
from facesearch.embedder.core.model_card import sha256_file
from facesearch.embedder.pipeline import FACE_POLICIES, build_settings, embed_photos
from facesearch.index.openset.commit import COMMIT_CALIBRATION
from facesearch.index.openset.open_set import unchanged_calibration
from facesearch.index.protocols import EmbedderLike, Progress
from facesearch.index.storage.manifest import MANIFEST_FILE, IndexPolicy, read_manifest, read_manifest_data
from facesearch.index.storage.merging import SWAP_WAIT, merge_segments
from facesearch.index.storage.store import UNLABELED, Photo, StoredFace
from facesearch.index.storage.writer import IndexWriter
from facesearch.index.sync.enrolled import ExclusionPlan, carry_enrolled, plan_exclusions
from facesearch.index.sync.scan import Scan, ScannedFile, plan_update, scan_folder


@dataclass
class BuildReport:
    """What a build did. Photo counts satisfy
    `total_files == added + updated + unchanged + len(skipped) + excluded`.

    `added`/`updated`: new/changed photos read successfully this run (including those with no
    face, and `reused` ones: content already indexed under another path, vectors kept).
    `removed`: indexed photos no longer in the folder. `skipped`: unreadable photos, with the
    reason; a changed photo that became unreadable loses its old vectors. `no_face`/`multi_face`:
    among photos read this run. `ignored`: files without an image extension. `excluded`: folder
    photos removed through the service and unchanged since, left out (`facesearch.index.sync.enrolled`).
    `enrolled`: photos enrolled through the service, embedded again from the photo store by a rebuild.
    """

    source_dir: str
    index_dir: str
    total_files: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    no_face: int = 0
    multi_face: int = 0
    reused: int = 0
    ignored: int = 0
    calibration: dict | None = None  # what the build did about the open-set threshold (facesearch.index.openset.open_set)
    excluded: int = 0
    enrolled: int = 0
    vectors: int = 0
    photos: int = 0
    identities: int = 0
    generation: int = 0
    written: bool = False  # False when nothing changed and the index was left as it was
    rebuilt: bool = False  # True when previous contents were discarded (rebuild, new face policy or crop method)
    segments: int = 0  # segments of the index after the build
    index_types: list[str] = field(default_factory=list)  # their kinds (flat, hnsw, ivf)
    merged: list[int] = field(default_factory=list)  # segments merged after the commit
    seconds: dict[str, float] = field(default_factory=lambda: {"scan": 0.0, "embed": 0.0, "save": 0.0})
    images_per_second: float = 0.0  # photos read + embedded per second in the embed phase
    shard_files_read: int | None = None  # --from-embeddings: files read row by row (the others were unchanged)
    tuning: list[dict] = field(default_factory=list)  # approximate segments written by this build, as tuned

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        return d


def tuned_segments(manifest, first: int) -> list[dict]:
    """How the approximate segments numbered `first` or above were tuned, for a build report.

    One dict per segment: its number, faces and structure (`factory`), the search parameter chosen,
    the objective and what was measured against exact search on its held-out rows (identity
    agreement, floor recall and where the floor came from, recall@k), and `note` when the
    targets were missed (what was kept instead).
    """
    from facesearch.index.storage.ann import IndexSpec

    out = []
    for info in manifest.segments:
        if info.number < first or info.kind == "flat":
            continue
        spec = IndexSpec.from_dict(info.spec)
        name, value = spec.search_parameter
        out.append({"segment": info.number, "faces": info.count, "factory": spec.factory, "parameter": name,
                    "value": value, "rerank": spec.rerank} | {key: getattr(spec, key) for key in (
                        "objective", "target_met", "agreement", "target_agreement", "strict_agreement",
                        "floor", "floor_source", "floor_recall", "target_recall", "recall", "recall_k",
                        "recall_at_1", "tune_sample", "note")})
    return out


def build_index(source_dir: str | os.PathLike, index_dir: str | os.PathLike, embedder: EmbedderLike, *,
                batch_size: int = DEFAULT_BATCH_SIZE, strict: bool = False, rebuild: bool = False, faces: str = "largest",
                workers: int | None = None, progress: Progress | None = None,
                policy: IndexPolicy | None = None, fpir: float | None = None, wait: float = 0.0,
                labeled: bool = True) -> BuildReport:
    """Create or update the index in `index_dir` from the photos in `source_dir`.

    With `labeled=False` the photos have no identity (any layout, photos anywhere below the folder):
    every face of each is stored without one, under the photo's absolute path, for `facesearch people`
    to group; queries never answer such a face until its person is named. Such a build mirrors the
    unlabelled photos below `source_dir` only: the labelled gallery folder, enrolled photos and other
    unlabelled folders in the index are left as they are (README "Unlabelled photos").

    Args:
        source_dir: folder of `<identity>/<photo>` images (identity rule: `facesearch.index.sync.scan`).
        index_dir: index directory; created if missing, updated in place (crash-safe) if present.
        embedder: gives face crops of a photo and their embeddings (`facesearch.index.protocols.EmbedderLike`).
        batch_size: photos read and embedded per batch.
        strict: raise on the first unreadable photo instead of skipping it.
        rebuild: discard the existing index (even one built by another model or damaged).
        faces: "largest" keeps the largest face of each photo, "all" keeps every face (unlabelled
            photos always keep every face; `faces` is then the policy recorded for labelled ones).
        workers: threads reading photos; default `embedder.core.constants.reader_threads()`.
        progress: optional callback, see `facesearch.index.protocols.Progress`.
        policy: index type, memory budget, raw vector dtype; None keeps the index's (or the defaults).
            A new index type rewrites the segments from their stored vectors (no photo is embedded).
        fpir: the false-positive identification rate the stored open-set threshold is for (None:
            the stored calibration's, else 1%); see `facesearch.index.openset.open_set`.
        wait: seconds to wait for another writer (a service's merge, another build) before giving up.
        labeled: False stores the photos as unlabelled (see above).

    Returns:
        A `BuildReport`.

    Raises:
        DatasetError: `source_dir` is missing, not a folder, has no images, or no face vector at
            all could be made (the previous index is then left as it was).
        ImageReadError: with `strict`, the first unreadable photo.
        IndexMismatchError: the index was built with another model (pass `rebuild=True`).
        IndexFormatError: the existing index is damaged (pass `rebuild=True`).
        IndexBusyError: another writer still holds the index after `wait` seconds.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if faces not in FACE_POLICIES:
        raise ValueError(f"faces must be one of {FACE_POLICIES}, got {faces!r}")
    start = time.perf_counter()
    index_dir = Path(index_dir).expanduser().resolve()
    scan = scan_folder(source_dir)
    report = BuildReport(str(scan.root), str(index_dir), total_files=len(scan.files), ignored=scan.ignored)
    existed = (index_dir / MANIFEST_FILE).exists()
    if not labeled:
        # The index's face policy (for its labelled photos) stays; only a new crop method rebuilds.
        faces = _recorded_faces(index_dir) or faces
        scan = _unlabeled(scan)
    settings = build_settings(embedder, faces)
    # A new face policy or crop method (e.g. --aligned, or a facesearch that aligns differently)
    # changes every photo: embed them all again. Not silently when that would drop unlabelled photos
    # (and the people named among them): those are embedded from their own folders, by their own builds.
    if not rebuild and _settings_differ(index_dir, settings):
        if unlabeled := _unlabeled_photos(index_dir):
            raise DatasetError(f"this build's settings ({settings}) differ from the index's, which means embedding "
                               f"every photo again from an empty index, and the index holds {unlabeled} unlabelled "
                               "photos whose people and names would go with it: build with the index's settings, "
                               "or pass --rebuild (then build the unlabelled folders again)")
        rebuild = True
    with IndexWriter.open(index_dir, calibrator=COMMIT_CALIBRATION, card=embedder.card, model_dir=embedder.model_dir,
                          source_dir=scan.root if labeled else None, build=settings, policy=policy, rebuild=rebuild,
                          wait=wait) as writer:
        report.rebuilt = existed and writer.fresh
        retype = (policy is not None and not writer.fresh and policy.index_type != writer.manifest.policy.index_type)
        # What the service changed survives: a rebuild embeds the enrolled photos again (facesearch.index.sync.enrolled).
        carried = carry_enrolled(index_dir, writer, embedder, workers=workers, batch_size=batch_size) \
            if report.rebuilt else None
        # Exclusions of this build's own photos only: labelled ones are relative, unlabelled ones absolute
        # below their folder (another folder's are not this build's to lapse).
        mine = [e for e in (carried.exclusions if carried else writer.exclusions())
                if _is_mine(e.path, scan.root, labeled)]
        exclusions = plan_exclusions(scan.root, scan.files, mine)
        if carried is not None:
            report.enrolled, report.skipped = carried.photos, report.skipped + carried.lost
        _update(scan.root, exclusions, writer, embedder, report, start, batch_size=batch_size, strict=strict,
                faces=faces if labeled else "all", workers=workers, progress=progress,
                carried=carried.faces if carried else 0, source="folder" if labeled else UNLABELED)
        writer.request_calibration(fpir)
        first_new = writer.manifest.next_segment
        t = time.perf_counter()
        result = writer.commit()
        report.seconds["save"] = time.perf_counter() - t
        m = writer.manifest
        report.tuning = tuned_segments(m, first_new)
        report.written = result.written or retype
        report.merged = result.merged
        report.generation = m.generation
        report.vectors, report.photos, report.identities = m.faces, m.photos, m.identities
        report.segments, report.index_types = len(m.segments), [s.kind for s in m.segments]
        report.calibration = result.calibration if result.written else unchanged_calibration(m.calibration)
    if retype:  # a new index type: every segment rewritten from its stored vectors, beside any server's writes
        t = time.perf_counter()
        merge_segments(index_dir, everything=True, force=True, wait=max(wait, SWAP_WAIT), lock_wait=max(wait, SWAP_WAIT))
        m = read_manifest(index_dir)
        report.generation, report.vectors = m.generation, m.faces
        report.segments, report.index_types = len(m.segments), [s.kind for s in m.segments]
        report.tuning = tuned_segments(m, 0)
        report.seconds["save"] += time.perf_counter() - t
    return report


def _update(root: Path, exclusions: ExclusionPlan, writer: IndexWriter, embedder: EmbedderLike, report: BuildReport,
            start: float, *, batch_size: int, strict: bool, faces: str, workers: int | None,
            progress: Progress | None, carried: int = 0, source: str = "folder") -> None:
    """Stage in `writer` what makes the index mirror `exclusions.files` (photos of `source`)."""
    files = exclusions.files
    report.excluded = len(exclusions.excluded)
    writer.lapse_exclusions(exclusions.lapsed)
    indexed = {} if writer.fresh else writer.photos(source)
    if source == UNLABELED:  # this folder's unlabelled photos, not other folders'
        prefix = root.as_posix().rstrip("/") + "/"
        indexed = {p: photo for p, photo in indexed.items() if p.startswith(prefix)}
    plan = plan_update(files, indexed)
    for f in plan.unchanged:
        if indexed[f.path].identity != f.identity:  # the identity rule changed
            writer.put_photo(_photo(f, indexed[f.path].sha256, indexed[f.path].n_faces, source))
    to_embed = list(plan.new)
    digests = _hash_files(plan.touched, root, workers, progress)
    for f in plan.touched:
        old = indexed[f.path]
        if digests[f.path] == old.sha256:  # touched, same bytes: keep the vectors
            writer.put_photo(_photo(f, old.sha256, old.n_faces, source))
        else:
            to_embed.append(f)
    to_embed.sort(key=lambda f: f.path)
    report.unchanged = len(files) - len(to_embed)
    report.removed = len(plan.removed)
    outgoing = plan.removed + [f.path for f in to_embed if f.path in indexed]
    old_faces = writer.faces_of(outgoing) if outgoing else {}
    writer.remove_photos(outgoing)
    # Content already indexed under an outgoing path (a moved or renamed photo) keeps its vectors.
    reusable = {indexed[p].sha256: p for p in outgoing}
    report.seconds["scan"] = time.perf_counter() - start

    t = time.perf_counter()
    live = writer.manifest.faces - sum(len(v) for v in old_faces.values()) + carried
    live += _embed(root, to_embed, writer, embedder, report, indexed, old_faces, reusable, exclusions,
                   batch_size=batch_size, strict=strict, faces=faces, workers=workers, progress=progress,
                   source=source)
    report.seconds["embed"] = time.perf_counter() - t
    report.images_per_second = len(to_embed) / report.seconds["embed"] if to_embed else 0.0
    if live == 0:
        raise DatasetError(_nothing_indexed(root, report))


def _embed(root: Path, to_embed: list[ScannedFile], writer: IndexWriter, embedder: EmbedderLike,
           report: BuildReport, indexed: dict[str, Photo], old_faces: dict[str, list[StoredFace]],
           reusable: dict[str, str], exclusions: ExclusionPlan, *, batch_size: int, strict: bool, faces: str,
           workers: int | None, progress: Progress | None, source: str = "folder") -> int:
    """Read and embed `to_embed` into `writer`; returns the faces staged."""
    staged = done = 0
    if progress is not None and to_embed:
        progress("embed", 0, len(to_embed))

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress("embed", done, len(to_embed))

    for batch in embed_photos([root / f.path for f in to_embed], embedder, batch_size=batch_size, policy=faces,
                              reusable=frozenset(reusable), workers=workers, on_batch=advance):
        for r in batch:
            file = to_embed[r.position]
            if r.error is not None:
                if strict:
                    raise r.error
                report.skipped.append((file.path, r.error.reason))
                continue
            if file.path in indexed:
                report.updated += 1
            else:
                report.added += 1
            if r.reuse:
                old = reusable[r.sha256]
                kept = old_faces.get(old, [])
                writer.keep_faces(_photo(file, r.sha256, indexed[old].n_faces, source), kept)
                del old_faces[old]  # its ids now belong to this photo
                report.reused += 1
                n_faces, staged = indexed[old].n_faces, staged + len(kept)
            else:
                kept, vectors = exclusions.drop_faces(file.path, r.sha256, r.kept, r.vectors)
                writer.add_photo(_photo(file, r.sha256, r.n_faces, source), kept, vectors)
                n_faces, staged = r.n_faces, staged + len(kept)
            report.no_face += n_faces == 0
            report.multi_face += n_faces > 1
    return staged


def _hash_files(files: list[ScannedFile], root: Path, workers: int | None,
                progress: Progress | None) -> dict[str, str | None]:
    """sha256 of each file (None if it cannot be read: it will be re-embedded and skipped then)."""
    def digest(f: ScannedFile) -> str | None:
        try:
            return sha256_file(root / f.path)
        except OSError:
            return None

    out: dict[str, str | None] = {}
    if not files:
        return out
    if progress is not None:
        progress("hash", 0, len(files))
    with ThreadPoolExecutor(max_workers=workers or reader_threads()) as pool:
        for i, (f, sha) in enumerate(zip(files, pool.map(digest, files)), 1):
            out[f.path] = sha
            if progress is not None and (i % 64 == 0 or i == len(files)):
                progress("hash", i, len(files))
    return out


def _photo(f: ScannedFile, sha256: str, n_faces: int, source: str = "folder") -> Photo:
    return Photo(f.path, f.identity, f.size, f.mtime_ns, sha256, n_faces, source)


def _unlabeled(scan: Scan) -> Scan:
    """The scan's files as unlabelled photos: absolute paths (they share the index with the gallery
    folder's relative ones without colliding), no identity."""
    files = [ScannedFile((scan.root / f.path).as_posix(), "", f.size, f.mtime_ns) for f in scan.files]
    return Scan(scan.root, files, scan.ignored)


def _is_mine(path: str, root: Path, labeled: bool) -> bool:
    """Whether an exclusion's photo belongs to this build (labelled: relative; else absolute below `root`)."""
    if labeled:
        return not path.startswith("/")
    return path.startswith(root.as_posix().rstrip("/") + "/")


def _unlabeled_photos(index_dir: Path) -> int:
    """Unlabelled photos in the index's current generation (0 when there is no readable index)."""
    from facesearch.index.storage.gallery import GalleryIndex

    try:
        with GalleryIndex.open(index_dir) as g:
            return len(g.store.photos(UNLABELED))
    except (IndexFormatError, OSError):
        return 0


def _recorded_faces(index_dir: Path) -> str | None:
    """The face policy the index records for its labelled photos (None: no index yet)."""
    try:
        data = read_manifest_data(index_dir)
    except IndexFormatError:
        return None
    return dict(data.get("build") or {}).get("faces", "largest") if isinstance(data, dict) else None


def _settings_differ(index_dir: Path, settings: dict) -> bool:
    try:
        data = read_manifest_data(index_dir)
    except IndexFormatError:
        return False  # no index yet, or a damaged one: the writer says what to do
    return isinstance(data, dict) and {"faces": "largest"} | dict(data.get("build") or {}) != settings


def _nothing_indexed(root: Path, report: BuildReport) -> str:
    parts = []
    if report.skipped:
        path, reason = report.skipped[0]
        parts.append(f"{len(report.skipped)} unreadable (first: {path}: {reason})")
    if report.no_face:
        parts.append(f"{report.no_face} with no face")
    why = ", ".join(parts) or "no photos left"
    return (f"no face vectors could be made from the {report.total_files} images in '{root}': {why}; "
            "nothing was written and any previous index is unchanged - fix or replace the photos and run again")
