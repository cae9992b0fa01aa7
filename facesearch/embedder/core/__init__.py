"""The shared leaf: errors, atomic writes, the model card, constants and environment lookups.

Nothing here imports another facesearch module (an import-linter contract checks it), so every
package (train, embedder, index, cli) can build on it without creating a cycle.
"""
