"""Camera inference on the device: OpenCV capture in its own thread, the bundle's
session frame by frame (or per ROI), records, alarms, statistics. Torch-free like
`edgetune.runtime`: numpy, OpenCV and the bundle's runtime only."""

from edgetune.camera.pipeline import InferOptions, run_inference

__all__ = ["InferOptions", "run_inference"]
