"""Shared settings for embedder tests: quiet TensorFlow before anything imports it."""

import os

# TensorFlow logs a page of C++ notices on import; keep test output readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
