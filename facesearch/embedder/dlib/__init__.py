"""The default model: dlib's face-recognition ResNet and 5-point shape predictor, ported.

Run-time side (numpy only): `weights` (the ResNet file reader), `shape_predictor`, `landmarks`,
`chip`, `models` (where the converted model is installed). Conversion side (TensorFlow, the
[train] extra): `keras_net`, `install`.
"""
