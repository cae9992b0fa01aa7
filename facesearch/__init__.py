"""facesearch: find people in photos. Detect, align and embed faces; index a gallery with FAISS; search it.

The command line (`facesearch`, `python -m facesearch`) and the service (`facesearch serve`) are its
two other doors; the parts underneath are `facesearch.embedder`, `facesearch.index`, `facesearch.train`.
"""

from facesearch.embedder.core.errors import FaceSearchError

__version__ = "0.1.0"

__all__ = ["FaceSearchError", "__version__"]
