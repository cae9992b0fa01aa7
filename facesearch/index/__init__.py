"""A gallery index on disk: immutable FAISS segments + tombstones + versioned SQLite metadata.

Public API:

- `build_index(source_dir, index_dir, embedder, ...) -> BuildReport`: create or update an index.
- `IndexWriter.open(index_dir, card=..., model_dir=...)`: stage changes, `commit()` one generation.
- `GalleryIndex.open(index_dir, card=None)`: `.search`, `.records`, `.rank_identities`.
- `rank_identities(gallery, vector, k, threshold) -> QueryResult`.

Nothing here imports TensorFlow: this package is on the query path.
"""

from facesearch.embedder.pipeline import FACE_POLICIES
from facesearch.index.build import BuildReport, build_index
from facesearch.index.gallery import GalleryIndex
from facesearch.index.manifest import FORMAT_VERSION, IndexPolicy, Manifest, read_manifest
from facesearch.index.protocols import EmbedderLike, FaceCropLike, Progress
from facesearch.index.scan import identity_of, scan_folder
from facesearch.index.search import UNKNOWN, IdentityMatch, QueryResult, rank_identities
from facesearch.index.store import FaceRecord, Photo
from facesearch.index.writer import CommitResult, IndexWriter

__all__ = [
    "FACE_POLICIES", "FORMAT_VERSION", "UNKNOWN", "BuildReport", "CommitResult", "EmbedderLike", "FaceCropLike",
    "FaceRecord", "GalleryIndex", "IdentityMatch", "IndexPolicy", "IndexWriter", "Manifest", "Photo", "Progress",
    "QueryResult", "build_index", "identity_of", "rank_identities", "read_manifest", "scan_folder",
]
