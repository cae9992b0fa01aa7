"""Image -> aligned face crop -> L2-normalised vector, and model export (Keras -> SavedModel / ONNX).

Subpackages by idea (see README "How it fits together"): `core` (the shared leaf), `detect`
(MTCNN), `dlib` (the default model's port), `export` (TensorFlow side), `evaluation` (metrics);
`images`, `align`, `crop`, `runtime` and `pipeline` form the run-time path, which never imports
TensorFlow, training or export code. This file imports nothing, so importing the leaf stays cheap.
"""
