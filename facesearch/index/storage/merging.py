"""Merges beside the writer (Lucene's concurrent merge scheduler): built from a snapshot, swapped in by a short commit.

A merge reads the segments it merges from a committed generation (segments never change), gathers
their live rows and builds the merged segment and its search structure in `.merging/`, holding
only the merge lock (`generation.MERGE_LOCK_FILE`: one merge at a time, whichever process runs it).
It takes the write lock only to swap the result in (`install_merge`): the files are renamed to the
next segment number of the generation current *then*, faces removed meanwhile stay tombstoned (now
on the merged segment), segments committed meanwhile are kept, and the manifest is replaced. A merge
whose segments are no longer current (a rebuild replaced them) is dropped. So an enrolment or a
removal waits for a merge at most for its swap: a few renames, a tombstone file, a manifest.

The merge policy (`plan_merge`) is Lucene's log merge by powers of ten of live rows.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from facesearch.index.storage.gallery import GalleryIndex, read_tombstones
from facesearch.index.storage.generation import MERGE_LOCK_FILE, MERGING_DIR, build_lock, commit, maintenance_lock
from facesearch.index.storage.manifest import IndexPolicy, Manifest, read_manifest, tombstone_name, utc_now
from facesearch.index.storage.segments import Segment, SegmentInfo, Spool, segment_names, write_segment
from facesearch.index.storage.store import Counts, IndexStore

# Merge policy (Lucene's log merge, by powers of ten of live rows): when one size level holds
# MERGE_FACTOR segments they are merged into one of the next level, so a vector is rewritten
# about log10(N) times over the life of an index, and a commit never rewrites a big segment for
# a small one. A segment whose share of removed rows reaches DEAD_SHARE is rewritten without them.
MERGE_FACTOR = 4
DEAD_SHARE = 0.3
# Segments smaller than this stay flat (exact) whatever the index type: an approximate structure
# over a few hundred vectors saves nothing (and IVF cannot even train).
MIN_APPROXIMATE = 1000
SWAP_WAIT = 60.0  # seconds a built merge waits for the write lock (writes hold it for a commit each)


def plan_merge(manifest: Manifest, dead: dict[int, int]) -> list[int]:
    """Segments to merge now, or [] (see MERGE_FACTOR and DEAD_SHARE)."""
    for info in manifest.segments:
        if info.count and dead.get(info.number, 0) >= DEAD_SHARE * info.count:
            # Rewrite it with the others of its level, so that rewriting also merges.
            level = _level(info.count - dead.get(info.number, 0))
            return sorted(s.number for s in manifest.segments
                          if _level(s.count - dead.get(s.number, 0)) <= level or s.number == info.number)
    levels: dict[int, list[SegmentInfo]] = {}
    for info in manifest.segments:
        levels.setdefault(_level(info.count - dead.get(info.number, 0)), []).append(info)
    for level in sorted(levels):
        if len(levels[level]) >= MERGE_FACTOR:
            return sorted(s.number for s in levels[level])
    return []


def _level(live: int) -> int:
    return int(math.log10(max(live, 1)))


def dead_counts(segments: Sequence[Segment], tombstones: np.ndarray) -> dict[int, int]:
    """Tombstoned rows per segment number."""
    return {s.info.number: int(np.isin(s.ids, tombstones, assume_unique=True).sum())
            for s in segments} if len(tombstones) else {}


def choose_kind(n: int, dim: int, policy: IndexPolicy) -> tuple[str, dict]:
    """The kind and spec of a new segment of `n` vectors, by the index's policy."""
    if policy.index_type == "flat" or n < MIN_APPROXIMATE:
        return "flat", {}
    from facesearch.index.storage import ann

    spec = ann.choose_spec(n, dim, policy.memory_budget or ann.default_memory_budget(),
                           kind=policy.index_type, target_recall=policy.target_recall)
    return spec.kind, spec.to_dict()


def cosine_threshold(calibration: dict | None) -> float | None:
    """The calibrated threshold of the manifest's record when it is a cosine (the score rule), for tuning's floor.

    The margin rule's threshold is on the scale s1 + w (s1 - s2), not a face score: tuning then
    estimates its floor from the segment's own scores instead.
    """
    if not calibration or calibration.get("rule") != "score":
        return None
    threshold = calibration.get("threshold")
    return float(threshold) if isinstance(threshold, (int, float)) else None


def identity_codes(store: IndexStore, ids: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """`(len(ids),)` int64 identity code of each face id (ascending), -1 for a face without one, for tuning.

    One pass over the metadata's (id, identity) rows, by id: about 1 s per million faces.
    """
    codes: dict[str, int] = {}
    known_ids, known_codes = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    rows = iter(store.face_identities())
    while block := [row for _, row in zip(range(chunk), rows)]:
        known_ids.append(np.fromiter((r[0] for r in block), np.int64, len(block)))
        known_codes.append(np.fromiter((codes.setdefault(r[1], len(codes)) for r in block), np.int64, len(block)))
    every, code = np.concatenate(known_ids), np.concatenate(known_codes)
    if len(every) == 0:
        return np.full(len(ids), -1, np.int64)
    at = np.minimum(np.searchsorted(every, ids), len(every) - 1)
    return np.where(every[at] == ids, code[at], -1)


def write_ids(path: Path, ids: np.ndarray) -> None:
    """A sorted int64 id file (tombstones), fsynced."""
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(ids, dtype=np.int64), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def check_consistent(m: Manifest) -> None:
    # Internal invariant: what the segments hold minus what is removed is what the metadata counts.
    if m.stored - m.dead != m.faces:
        raise AssertionError(f"segments hold {m.stored} vectors, {m.dead} removed, but the metadata counts "
                             f"{m.faces} faces")


# --- building (no write lock) ----------------------------------------------------------------


@dataclass
class BuiltMerge:
    """A merged segment built from a snapshot, not yet part of the index."""

    chosen: list[SegmentInfo]  # the segments it replaces, as the snapshot named them
    dropped: np.ndarray  # their ids not copied (removed at the snapshot): tombstones no longer needed
    info: SegmentInfo | None  # the merged segment, numbered 0 inside `folder`; None when nothing was live
    folder: Path
    policy: IndexPolicy  # built with
    record_policy: bool = True  # False: the swap keeps the policy current then (an automatic merge's was the snapshot's)
    seconds: dict[str, float] = field(default_factory=dict)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def build_merge(index_dir: Path, chosen: Sequence[Segment], tombstones: np.ndarray, policy: IndexPolicy,
                dim: int, *, store: IndexStore | None = None, calibration: dict | None = None) -> BuiltMerge:
    """Write the live rows of `chosen` (those not in the sorted `tombstones`) as one segment in `.merging/`.

    The caller holds the merge lock. The type is chosen again for the merged size by `policy`; an
    approximate one is tuned with the faces' identities read from `store` (the generation merged)
    and the calibrated threshold of `calibration` (see `cosine_threshold`).
    """
    t = time.perf_counter()
    folder = index_dir / MERGING_DIR
    shutil.rmtree(folder, ignore_errors=True)  # a crashed merge's leftovers: only the lock holder is here
    folder.mkdir()
    spool = Spool(folder, 0, dim)
    try:
        ids, vectors = _live_rows(chosen, tombstones, spool, dim)
        info = None
        if len(ids):
            kind, spec = choose_kind(len(ids), dim, policy)
            labels = identity_codes(store, ids) if store is not None and kind != "flat" else None
            info = write_segment(folder, 0, vectors, ids, dtype=policy.vector_dtype, kind=kind, spec=spec,
                                 labels=labels, threshold=cosine_threshold(calibration))
    except BaseException:
        spool.discard()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    spool.discard()
    every = np.concatenate([s.ids for s in chosen]) if chosen else np.empty(0, np.int64)
    return BuiltMerge([s.info for s in chosen], np.setdiff1d(every, ids), info, folder, policy,
                      seconds={"build": time.perf_counter() - t})


def _live_rows(chosen: Sequence[Segment], tombstones: np.ndarray, spool: Spool,
               dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids ascending, their vectors) of the live rows of `chosen`, gathered chunk by chunk into `spool`
    (memory-mapped), so merging large segments stays out of RAM."""
    live = [~np.isin(s.ids, tombstones, assume_unique=True) if len(tombstones)
            else np.ones(len(s.ids), bool) for s in chosen]
    ids = np.concatenate([s.ids[m] for s, m in zip(chosen, live)]) if chosen else np.empty(0, np.int64)
    source = np.concatenate([np.full(int(m.sum()), i) for i, m in enumerate(live)]) if chosen else ids
    position = np.concatenate([np.flatnonzero(m) for m in live]) if chosen else ids
    order = np.argsort(ids, kind="stable")
    for start in range(0, len(order), 1 << 16):
        take = order[start:start + (1 << 16)]
        block = np.empty((len(take), dim), np.float32)
        for i, seg in enumerate(chosen):
            here = source[take] == i
            if here.any():
                block[here] = seg.vectors(position[take][here])
        spool.append(ids[take], block)
    if not len(order):
        return ids, np.empty((0, dim), np.float32)
    return spool.arrays()


# --- swapping in (a short commit under the write lock) ---------------------------------------


def install_merge(index_dir: Path, current: Manifest, g: int, built: BuiltMerge) -> Manifest | None:
    """`current` with `built` swapped in, as generation `g` (counts still to record), or None when a
    segment it replaces is no longer in `current` (the merge is obsolete). The caller holds the write lock.

    Faces removed since the snapshot stay in the tombstones: they are rows of the merged segment now.
    """
    named = {s.number: s for s in current.segments}
    if any(named.get(s.number) != s for s in built.chosen):
        return None
    replaced = {s.number for s in built.chosen}
    segments = [s for s in current.segments if s.number not in replaced]
    number = current.next_segment
    if built.info is not None:
        target = segment_names(number)
        for key, name in built.info.files.items():
            os.replace(built.folder / name, index_dir / target[key])
        segments.append(replace(built.info, number=number))
    tombstones = np.setdiff1d(read_tombstones(index_dir, current), built.dropped)
    tomb_file = None
    if len(tombstones):
        tomb_file = tombstone_name(g)
        write_ids(index_dir / tomb_file, tombstones)
    return replace(current, generation=g, segments=segments, tombstones=tomb_file, dead=len(tombstones),
                   next_segment=number + 1, policy=built.policy if built.record_policy else current.policy,
                   updated=utc_now())


def short_commit(index_dir: Path, make: Callable[[Manifest, int], Manifest | None], *,
                 lock_wait: float = SWAP_WAIT) -> Manifest | None:
    """Under the write lock: `make(current manifest, next generation)` and commit what it returns
    (None: nothing), with no metadata row changed (the generation's counts are recorded).

    Raises:
        IndexBusyError: the write lock stayed held for `lock_wait` seconds.
    """
    with build_lock(index_dir, wait=lock_wait):
        current = read_manifest(index_dir)
        g = current.generation + 1
        manifest = make(current, g)
        if manifest is None:
            return None
        store = IndexStore.open_writer(index_dir / current.metadata_file, current.generation)
        try:
            counts = record_generation(store, g)
        finally:
            store.close()
        manifest = replace(manifest, generation=g, faces=counts.faces, photos=counts.photos,
                           identities=counts.identities, updated=utc_now())
        check_consistent(manifest)
        commit(index_dir, manifest)
        return manifest


def record_generation(store: IndexStore, g: int) -> Counts:
    """Record generation `g` with no row changed (a merge, a calibration); purge what no reader sees."""
    store.generation = g
    with store.write() as w:
        pass
    store.purge(before=g - 2)
    return w.counts


@dataclass
class MergeResult:
    """What `merge_segments` did."""

    generation: int
    written: bool  # False: nothing to merge, or the merge became obsolete (`obsolete`)
    merged: list[int] = field(default_factory=list)
    manifest: Manifest | None = None
    obsolete: bool = False
    seconds: dict[str, float] = field(default_factory=dict)


def merge_segments(index_dir: str | os.PathLike, *, everything: bool = False, force: bool = False,
                   policy: IndexPolicy | None = None, wait: float = 0.0, lock_wait: float = SWAP_WAIT,
                   snapshot: GalleryIndex | None = None) -> MergeResult:
    """Merge segments beside any writer: what `plan_merge` says (or `everything`, a compaction).

    Args:
        index_dir: the index.
        everything: merge every segment into one (skipped when there is one and nothing removed, unless `force`).
        force: with `everything`, rewrite even a single clean segment (e.g. for a new policy).
        policy: the policy to build with and record (None: the index's).
        wait: seconds to wait for another merge (the merge lock).
        lock_wait: seconds the swap waits for the write lock.
        snapshot: an open generation to merge from (a server's current one); None opens the newest.

    Raises:
        IndexBusyError: another merge runs (after `wait`), or the write lock stayed held (`lock_wait`).
        IndexFormatError: there is no readable index.
    """
    index_dir = Path(index_dir).expanduser().resolve()
    with maintenance_lock(index_dir, MERGE_LOCK_FILE, wait):
        with contextlib.ExitStack() as stack:
            snap = snapshot if snapshot is not None else stack.enter_context(GalleryIndex.open(index_dir))
            m = snap.manifest
            if everything:
                numbers = [s.number for s in m.segments] if force or len(m.segments) > 1 or m.dead else []
            else:
                numbers = plan_merge(m, dead_counts(snap.segments, snap.tombstones))
            if not numbers:
                return MergeResult(m.generation, False)
            chosen = [s for s in snap.segments if s.info.number in set(numbers)]
            # Its own reader of the merged generation's metadata: the identity scan (~1 s per million
            # faces) then holds no lock that a server's queries on the snapshot wait for.
            store = stack.enter_context(contextlib.closing(
                IndexStore.open_reader(index_dir / m.metadata_file, m.generation)))
            built = build_merge(index_dir, chosen, snap.tombstones, policy or m.policy, m.dim, store=store,
                                calibration=m.calibration)
            built.record_policy = policy is not None
        try:
            t = time.perf_counter()
            manifest = short_commit(index_dir, lambda current, g: install_merge(index_dir, current, g, built),
                                    lock_wait=lock_wait)
            built.seconds["swap"] = time.perf_counter() - t
        finally:
            built.discard()
    if manifest is None:
        return MergeResult(read_manifest(index_dir).generation, False, numbers, obsolete=True, seconds=built.seconds)
    return MergeResult(manifest.generation, True, numbers, manifest, seconds=built.seconds)
