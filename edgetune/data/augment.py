"""What random changes training applies (`--augment`). Plain data, no torch, so
the CLI can parse it cheaply; `edgetune.data.transforms` turns it into ops."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Mirror images of a part look like the part; a quarter turn often does not: a fixed
# line camera sees parts the same way up (ELPV's cells all have horizontal busbars,
# and rot90 cost points there). Add rot90 for parts that arrive at any angle.
DEFAULT_AUGMENT = "hflip,vflip,brightness=0.1,contrast=0.1"


@dataclass(frozen=True)
class Augment:
    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    rotate: float = 0.0  # degrees
    rrc: float = 1.0  # RandomResizedCrop minimum area; 1.0 = off
    mosaic: float = 0.0  # detection: the share of samples made of four images (tasks/detect/data.py)
    brightness: float = 0.0
    contrast: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        parts = [k for k in ("hflip", "vflip", "rot90") if getattr(self, k)]
        numbers = ("rotate", "brightness", "contrast", "mosaic")
        parts += [f"{k}={getattr(self, k):g}" for k in numbers if getattr(self, k)]
        parts += [f"rrc={self.rrc:g}"] if self.rrc < 1.0 else []
        return ",".join(parts) or "none"

    @classmethod
    def parse(cls, value) -> "Augment":
        """From a comma list (`hflip,rot90,rotate=10`), `none`, or a mapping."""
        if isinstance(value, Augment):
            return value
        if isinstance(value, str):
            parsed = {}
            for part in value.split(","):
                key, _, v = part.strip().partition("=")
                if key and key != "none":
                    parsed[key] = v if v else True
            value = parsed
        if not isinstance(value, dict):
            raise ValueError(f"{value!r} is neither a comma list like 'hflip,rot90,rotate=10' nor a mapping")
        fields = cls.__dataclass_fields__
        unknown = set(value) - set(fields)
        if unknown:
            raise ValueError(f"unknown augmentation(s) {', '.join(sorted(unknown))}; known: {', '.join(fields)}")
        typed = {}
        for k, v in value.items():
            if fields[k].type == "bool":
                typed[k] = v in (True, 1, "1", "true", "yes")
            else:
                try:
                    typed[k] = float(v)
                except (TypeError, ValueError):
                    raise ValueError(f"{k}={v!r}: takes a number") from None
        return cls(**typed)
