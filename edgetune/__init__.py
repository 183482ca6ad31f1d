"""edgetune: fine-tune, compress and deploy small vision models to edge devices."""

__version__ = "0.1.0"
