"""Export (imports TensorFlow): a Keras embedding model -> SavedModel + ONNX + model card, parity proven.

Never imported by the run-time path (embedder runtime, index, query, service).
"""

from facesearch.embedder.export.exporter import ExportReport, export_model

__all__ = ["ExportReport", "export_model"]
