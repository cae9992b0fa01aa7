"""MobileFaceNet backbone, ArcFace head, tf.data input and the fit loop.

Importing this package imports no TensorFlow; its submodules that build models do.
"""
