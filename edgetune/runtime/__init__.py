"""The device side of edgetune. Imports numpy and OpenCV only, never torch/timm/nncf:
a Jetson or factory PC runs bundles with this package and its runtime alone."""
