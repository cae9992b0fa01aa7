"""A gallery index on disk: immutable FAISS segments + tombstones + versioned SQLite metadata.

Public API:

- `build_index(source_dir, index_dir, embedder, ...) -> BuildReport`: create or update an index.
- `IndexWriter.open(index_dir, card=..., model_dir=...)`: stage changes, `commit()` one generation.
- `GalleryIndex.open(index_dir, card=None)`: `.search`, `.records`, `.rank_identities`.
- `rank_identities(gallery, vector, k, threshold) -> QueryResult`.

Nothing here imports TensorFlow: this package is on the query path.
"""

from embedder.pipeline import FACE_POLICIES
from index.build import BuildReport, build_index
from index.gallery import GalleryIndex
from index.manifest import FORMAT_VERSION, IndexPolicy, Manifest, read_manifest
from index.protocols import EmbedderLike, FaceCropLike, Progress
from index.scan import identity_of, scan_folder
from index.search import UNKNOWN, IdentityMatch, QueryResult, rank_identities
from index.store import FaceRecord, Photo
from index.writer import CommitResult, IndexWriter

__all__ = [
    "FACE_POLICIES", "FORMAT_VERSION", "UNKNOWN", "BuildReport", "CommitResult", "EmbedderLike", "FaceCropLike",
    "FaceRecord", "GalleryIndex", "IdentityMatch", "IndexPolicy", "IndexWriter", "Manifest", "Photo", "Progress",
    "QueryResult", "build_index", "identity_of", "rank_identities", "read_manifest", "scan_folder",
]
