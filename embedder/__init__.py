"""Image -> aligned face crop -> L2-normalised vector; model export (Keras -> SavedModel / ONNX).

The runtime modules (images, runtime, model_card) import no TensorFlow; `embedder.export` does.
"""

# Images per ONNX Runtime call. On a 2-core CPU, batches of 16 embedded a MobileFaceNet gallery
# faster than 32 or 64 (larger batches fall out of cache; benchmarks/build_index.py).
DEFAULT_BATCH_SIZE = 16
