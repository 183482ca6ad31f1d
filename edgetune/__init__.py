"""edgetune: fine-tune, compress and deploy small image classifiers to edge devices."""

__version__ = "0.1.0"
