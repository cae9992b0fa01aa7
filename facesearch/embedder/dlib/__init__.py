"""The default model: dlib's face-recognition ResNet and 5-point shape predictor, ported.

Run-time side (numpy only): `weights` (the ResNet file reader), `shape_predictor`, `landmarks`,
`chip`, `models` (where the converted model is installed), `onnx_net` (the ResNet as an ONNX graph,
built with `onnx.helper`). `install` converts once into the cache with the core dependencies alone;
where TensorFlow is installed it also checks the graph against `keras_net`, the Keras model.
"""
