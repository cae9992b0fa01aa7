"""The facesearch error hierarchy: one base class, one subclass per kind of failure."""


class FaceSearchError(Exception):
    """Base of every error facesearch raises on purpose; the CLI prints it as `Error: ...`."""


class ImageReadError(FaceSearchError):
    """A file could not be read as an image. `path` names the file."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image '{self.path}': {reason}")


class TooManyFacesError(FaceSearchError):
    """A photo shows more faces than one request may align and embed (the service's --max-faces)."""

    def __init__(self, path, found: int, limit: int):
        self.path, self.found, self.limit = str(path), found, limit
        self.reason = f"{found} faces found; the limit is {limit} per photo (crop the photo, or raise --max-faces)"
        super().__init__(f"photo '{self.path}': {self.reason}")


class ModelSpecError(FaceSearchError):
    """A model file or model card is missing, malformed or of an unsupported version."""


class ExportParityError(FaceSearchError):
    """An exported model does not reproduce the Keras model's embeddings."""


class DatasetError(FaceSearchError):
    """A training or gallery folder is missing, empty or malformed."""


class IndexFormatError(FaceSearchError):
    """An index directory is missing, damaged or of an unsupported format version."""


class IndexBusyError(FaceSearchError):
    """Another writer (a build, a compaction, a service process) holds the index's lock; retry later."""


class IndexMismatchError(FaceSearchError):
    """An index was built with a different model than the one asked to use it."""


class NoFaceFoundError(FaceSearchError):
    """A photo that had to show a face shows none the detector can find. `path` names the photo."""

    def __init__(self, path, hint: str = ""):
        self.path = str(path)
        super().__init__(f"no face found in '{self.path}'" + (f": {hint}" if hint else ""))


class EmbeddingShardError(FaceSearchError):
    """An embedding shard folder or file (`facesearch.embedder.embedding_shards`) is missing, malformed or holds a bad row.

    `file` names the file at fault and `row` its 0-based row, where one row is to blame (else None).
    """

    def __init__(self, message: str, file=None, row: int | None = None):
        self.file = None if file is None else str(file)
        self.row = row
        super().__init__(message)


class EngineError(FaceSearchError):
    """A distributed engine (Ray) is not installed, cannot be reached, or its job failed as a whole."""


class AnnInputError(FaceSearchError, ValueError):
    """Vectors, queries or arguments given to the vector search (`facesearch.index.storage.ann`) are malformed."""


class MemoryBudgetError(FaceSearchError):
    """No index of the asked kind fits the memory budget."""


class IdentityNameError(FaceSearchError):
    """A name that cannot be an identity (empty, too long, or with characters a path cannot hold)."""


class NotFoundError(FaceSearchError):
    """What was asked for (an identity, a stored face) is not in the index."""


class IdentityNotFoundError(NotFoundError):
    """No photo of this identity is in the index."""


class FaceNotFoundError(NotFoundError):
    """No live face has this id."""


class PhotoNotFoundError(NotFoundError):
    """No live face was stored from a photo at this path."""


class PersonNotFoundError(NotFoundError):
    """No provisional person (`person-0001`, ...) has this id."""


class PeopleError(FaceSearchError):
    """A change to the people of unlabelled photos that cannot be made (merging a person with itself,
    putting two faces of one photo in one person, a face that has no person to leave)."""


class MilvusError(FaceSearchError):
    """A Milvus gallery (`--index milvus://...` / `milvus-lite:...`) cannot be used as asked: a malformed
    address, a collection facesearch did not make, an index type the engine would not really build."""


class MilvusUnavailableError(MilvusError):
    """The Milvus server named by the address cannot be reached (down, wrong host or port, timed out)."""


class MilvusAuthError(MilvusError):
    """The Milvus server refused the credentials ($FACESEARCH_MILVUS_TOKEN or the file it names)."""
