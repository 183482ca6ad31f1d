"""Atomic writes and hashing: a killed process never leaves a half-written file
that looks valid."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def parse_yaml(text: str, where: str) -> dict:
    """The top-level mapping of a YAML document (safe load; empty: {}). `where`
    names it in errors, e.g. "Config file x.yaml"."""
    import yaml

    from edgetune.errors import EdgetuneError

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise EdgetuneError(f"{where} is not valid YAML: {e}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EdgetuneError(f"{where} must hold a mapping of keys to values, not a {type(data).__name__}.")
    return data


def read_yaml(path: str | os.PathLike, what: str) -> dict:
    """`parse_yaml` of a file; `what` says what it is ("Config file")."""
    from edgetune.errors import EdgetuneError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise EdgetuneError(f"{what} {path} cannot be read: {e.strerror or e}.") from None
    return parse_yaml(text, f"{what} {path}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-serialisable value, independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
