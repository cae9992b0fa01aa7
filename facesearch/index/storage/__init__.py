"""Storage: what an index is on disk and how it changes (manifest, generations, segments, store, writer, ann/)."""
