"""Where the YAML data that ships with edgetune lives: `targets/` and
`calibration/` at the top of the repository, packaged in the wheel as
`edgetune.profiles` and `edgetune.recipes`."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def data_dir(package: str, folder: str) -> Path:
    try:
        return Path(str(files(package)))
    except ModuleNotFoundError:  # a source checkout or an editable install
        return Path(__file__).resolve().parents[1] / folder
