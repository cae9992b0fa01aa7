"""facesearch: find people in photos. Detect, align and embed faces; index a gallery with FAISS; search it.

    import facesearch

    gallery = facesearch.open("people-index")          # an index folder; created by the first add
    report = gallery.add("photos/")                    # <person>/<photo> folders; incremental
    gallery.enrol("ada.jpg", "Ada Lovelace")
    for face in gallery.search("group.jpg", k=5):      # every face found
        print(face.box, face.identity, face.score)     # identity None: unknown
    facesearch.verify("a.jpg", "b.jpg")                # same person? score, threshold, verdict

The API (`facesearch.api`) loads on first use, so `import facesearch` and `facesearch --help` stay
fast. The command line (`facesearch`, `python -m facesearch`) and the service (`facesearch serve`)
call the same functions; the parts underneath are `facesearch.embedder`, `facesearch.index` and
`facesearch.train` (see docs/architecture.md).
"""

from facesearch.embedder.core.errors import (
    FaceNotFoundError,
    FaceSearchError,
    IdentityNameError,
    IdentityNotFoundError,
    ImageReadError,
    IndexBusyError,
    IndexFormatError,
    IndexMismatchError,
    ModelSpecError,
    NoFaceFoundError,
    NotFoundError,
    PhotoNotFoundError,
)

__version__ = "0.1.0"

# Names served by facesearch.api, imported when first asked for (numpy, ONNX Runtime and FAISS load then).
_API = ("open", "verify", "detect", "embed", "Gallery", "SearchResult", "Face", "Match", "Verification",
        "DetectedFace", "EmbeddedFace", "Enrolment", "Removal", "Compaction", "ImageInput")

__all__ = [
    *_API, "FaceNotFoundError", "FaceSearchError", "IdentityNameError", "IdentityNotFoundError", "ImageReadError", "IndexBusyError",
    "IndexFormatError", "IndexMismatchError", "ModelSpecError", "NoFaceFoundError", "NotFoundError", "PhotoNotFoundError", "__version__",
]


def __getattr__(name: str):
    if name in _API:
        from facesearch import api

        return getattr(api, name)
    raise AttributeError(f"module 'facesearch' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
