"""Image -> aligned face crop -> L2-normalised vector; model export (Keras -> SavedModel / ONNX).

The runtime modules (images, runtime, model_card) import no TensorFlow; `embedder.export` does.
"""
