"""A gallery index on disk: immutable FAISS segments + tombstones + versioned SQLite metadata.

Three rooms: `storage` (what is on disk and how it changes: manifest, generations, segments, store,
the writer, ann/), `openset` (ranking identities, the decision rules, their calibration) and `sync`
(keeping an index in step with a photo folder, embedding shards, enrolments). Public API:

- `build_index(source_dir, index_dir, embedder, ...) -> BuildReport`: create or update an index.
- `open_writer(index_dir, card=..., model_dir=...)`: stage changes, `commit()` one generation (each
  commit keeps the open-set calibration up to date).
- `GalleryIndex.open(index_dir, card=None)`: `.search`, `.records`.
- `rank_identities(gallery, vector, k, threshold) -> QueryResult`.

Nothing here imports TensorFlow: this package is on the query path.
"""

import contextlib
from collections.abc import Iterator

from facesearch.embedder.pipeline import FACE_POLICIES
from facesearch.index.openset.commit import COMMIT_CALIBRATION
from facesearch.index.openset.ranking import UNKNOWN, IdentityMatch, QueryResult, rank_identities
from facesearch.index.protocols import EmbedderLike, FaceCropLike, Progress
from facesearch.index.storage.gallery import GalleryIndex
from facesearch.index.storage.manifest import FORMAT_VERSION, IndexPolicy, Manifest, read_manifest
from facesearch.index.storage.store import FaceRecord, Photo
from facesearch.index.storage.writer import CommitResult, IndexWriter
from facesearch.index.sync.build import BuildReport, build_index
from facesearch.index.sync.scan import identity_of, scan_folder

__all__ = [
    "FACE_POLICIES", "FORMAT_VERSION", "UNKNOWN", "BuildReport", "CommitResult", "EmbedderLike", "FaceCropLike",
    "FaceRecord", "GalleryIndex", "IdentityMatch", "IndexPolicy", "IndexWriter", "Manifest", "Photo", "Progress",
    "QueryResult", "build_index", "identity_of", "open_writer", "rank_identities", "read_manifest", "scan_folder",
]


@contextlib.contextmanager
def open_writer(index_dir, **options) -> Iterator[IndexWriter]:
    """`IndexWriter.open(index_dir, **options)` with the index's commit-time calibration hook: how
    every writer outside the storage room opens an index."""
    with IndexWriter.open(index_dir, calibrator=COMMIT_CALIBRATION, **options) as writer:
        yield writer
