"""Face detection: MTCNN's cascade on ONNX Runtime (`cascade`), its nets (`nets`), drawing (`draw`)."""

from facesearch.embedder.detect.cascade import Detection, Detector, DetectorConfig

__all__ = ["Detection", "Detector", "DetectorConfig"]
