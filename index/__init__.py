"""FAISS inner-product gallery index with identity metadata on disk: build, update, search."""
