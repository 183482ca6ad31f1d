"""Device profiles: YAML files in the repository's `targets/` (shipped in the wheel as
`edgetune.profiles`) or a user's own file. A profile may `extends:` another one and
override some of its fields. Every field is checked; a mistake names the file, the
field, the value and what is allowed."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.errors import EdgetuneError
from edgetune.resources import data_dir
from edgetune.runtime.backends import RUNTIMES as RUNTIMES_BY_NAME
from edgetune.runtime.files import parse_yaml

# bf16: OpenVINO on a CPU with AVX512_BF16 or AMX (each runtime's record says what its plug-in builds)
PRECISIONS = ("int8", "fp16", "bf16", "fp32")
RUNTIMES = tuple(RUNTIMES_BY_NAME)
ACTIVATIONS = ("auto", "int8")  # the quantize command's --activations


def _profiles_dir() -> Path:
    return data_dir("edgetune.profiles", "targets")


def known_profiles() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in _profiles_dir().iterdir() if p.name.endswith(".yaml"))


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    runtime: str
    precision: str
    fallback: tuple[str, ...]
    channel_multiple: int
    batch: int
    size: tuple[int, int] | None
    options: dict
    tensorrt: dict
    source: str  # where it was read from
    activations: str = (
        "auto"  # INT8 activations the runtime takes: auto (uint8 after ReLU, int8 elsewhere) or int8 only
    )

    @property
    def precisions(self) -> list[str]:
        """Main precision first, then the fallbacks."""
        return [self.precision, *[p for p in self.fallback if p != self.precision]]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "runtime": self.runtime,
            "precision": self.precision,
            "fallback": list(self.fallback),
            "channel_multiple": self.channel_multiple,
            "input": {"batch": self.batch, "size": list(self.size) if self.size else None},
            "options": dict(self.options),
            "tensorrt": dict(self.tensorrt),
            "quantization": {"activations": self.activations},
            "source": self.source,
        }


# field -> (check, what is allowed). Only these keys may appear.
def _str(v):
    return isinstance(v, str) and v.strip() != ""


def _pos_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


TOP_FIELDS = {
    "name": (_str, "a non-empty string"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "extends": (_str, "the name of another profile"),
    "runtime": (lambda v: v in RUNTIMES, f"one of {', '.join(RUNTIMES)}"),
    "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "fallback": (
        lambda v: isinstance(v, list) and all(p in PRECISIONS for p in v),
        f"a list of precisions ({', '.join(PRECISIONS)})",
    ),
    "channel_multiple": (_pos_int, "a positive integer"),
    "input": (lambda v: isinstance(v, dict), "a mapping with batch and size"),
    "options": (lambda v: isinstance(v, dict), "a mapping of runtime options"),
    "tensorrt": (lambda v: isinstance(v, dict), "a mapping of TensorRT build settings"),
    "quantization": (lambda v: isinstance(v, dict), "a mapping of INT8 quantization needs (activations)"),
}
QUANTIZATION_FIELDS = {
    "activations": (
        lambda v: v in ACTIVATIONS,
        f"one of {', '.join(ACTIVATIONS)} (int8: signed activations only, as TensorRT needs)",
    ),
}
INPUT_FIELDS = {
    "batch": (_pos_int, "a positive integer"),
    "size": (
        lambda v: v is None or _pos_int(v) or (isinstance(v, list) and len(v) == 2 and all(_pos_int(x) for x in v)),
        "null (the trained size), an integer or [height, width]",
    ),
}
TENSORRT_FIELDS = {
    "workspace_mb": (_pos_int, "a positive integer (MiB)"),
    "dla_core": (
        lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0),
        "null (GPU only) or a DLA core number (0, 1)",
    ),
    "builder_optimization_level": (lambda v: isinstance(v, int) and 0 <= v <= 5, "an integer 0..5"),
    "min_jetpack": (lambda v: isinstance(v, (str, int, float)), 'a version such as "6.0"'),
    "min_tensorrt": (lambda v: isinstance(v, (str, int, float)), 'a version such as "10.0"'),
}
REQUIRED = ("name", "runtime", "precision")


def _check_fields(data: dict, fields: dict, where: str, prefix: str = "") -> None:
    for key, value in data.items():
        if key not in fields:
            raise EdgetuneError(f"Target profile {where}: unknown field '{prefix}{key}'. Allowed: {', '.join(fields)}.")
        check, allowed = fields[key]
        if not check(value):
            raise EdgetuneError(f"Target profile {where}: field '{prefix}{key}' is {value!r}; it must be {allowed}.")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read(name_or_path: str | Path, seen: tuple[str, ...] = ()) -> tuple[dict, str]:
    """The raw mapping of a profile, with `extends:` resolved."""
    text, where = _locate(str(name_or_path))
    data = parse_yaml(text, f"Target profile {where}")
    _check_fields(data, TOP_FIELDS, where)
    parent = data.get("extends")
    if parent:
        if parent in seen:
            raise EdgetuneError(
                f"Target profile {where}: field 'extends' makes a loop ({' -> '.join((*seen, parent))})."
            )
        base, _ = _read(parent, (*seen, str(name_or_path)))
        data = _merge(base, {k: v for k, v in data.items() if k != "extends"})
    return data, where


def _locate(name: str) -> tuple[str, str]:
    looks_like_path = name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name
    if looks_like_path:
        path = Path(name)
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as e:
            raise EdgetuneError(f"--target {name}: the profile file cannot be read ({e.strerror or e}).") from None
    resource = _profiles_dir() / f"{name}.yaml"
    if not resource.is_file():
        raise EdgetuneError(
            f"--target {name}: unknown target. Known targets: {', '.join(known_profiles())}; or give the path of your "
            "own profile YAML."
        )
    return resource.read_text(encoding="utf-8"), f"{name} ({name}.yaml)"


def load_profile(name_or_path: str | Path) -> Profile:
    """A validated profile from a built-in name ("cpu", "jetson-orin-nano", ...) or a YAML path."""
    data, where = _read(name_or_path)
    for key in REQUIRED:
        if key not in data:
            raise EdgetuneError(
                f"Target profile {where}: field '{key}' is missing. Required fields: {', '.join(REQUIRED)}."
            )
    inp = data.get("input") or {}
    _check_fields(inp, INPUT_FIELDS, where, "input.")
    trt = data.get("tensorrt") or {}
    _check_fields(trt, TENSORRT_FIELDS, where, "tensorrt.")
    if trt and data["runtime"] != "tensorrt":
        raise EdgetuneError(
            f"Target profile {where}: field 'tensorrt' applies only to runtime tensorrt, not {data['runtime']}."
        )
    quant = data.get("quantization") or {}
    _check_fields(quant, QUANTIZATION_FIELDS, where, "quantization.")
    from edgetune.targets.registry import plugin_for

    plugin = plugin_for(data["runtime"])
    activations = quant.get("activations", "int8" if plugin.signed_activations else "auto")
    if plugin.signed_activations and activations != "int8":
        raise EdgetuneError(
            f"Target profile {where}: field 'quantization.activations' is {activations!r}, but {data['runtime']} has "
            "no uint8 quantization; it must be int8."
        )
    size = inp.get("size")
    if isinstance(size, int):
        size = [size, size]
    options = data.get("options") or {}
    plugin.check_options(options, where)
    fallback = data.get("fallback") or []
    return Profile(
        name=data["name"],
        description=data.get("description", ""),
        runtime=data["runtime"],
        precision=data["precision"],
        fallback=tuple(fallback),
        channel_multiple=data.get("channel_multiple", 1),
        batch=inp.get("batch", 1),
        size=tuple(size) if size else None,
        options=options,
        tensorrt=trt,
        source=where,
        activations=activations,
    )


def check_option_fields(options: dict, allowed: dict[str, tuple[Any, str]], where: str) -> None:
    """For plug-ins: check a profile's `options` against their own fields."""
    _check_fields(options, allowed, where, "options.")
