"""YAML configuration following Click's `default_map` convention.

Top-level keys are shared by every command that has that option (`data`, `model`,
`img-size`, `seed`, ...); a section per command (`finetune:`, `quantize:`, ...)
holds that command's long option names. A CLI flag overrides the file. Every key is
checked against the commands' real options, and every value against the option's
type, so a mistake names the key, its value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgetune.errors import EdgetuneError
from edgetune.runtime.files import read_yaml


def load_yaml(path: str | Path) -> dict:
    return read_yaml(path, "Config file")


def _key(name: str) -> str:
    return name.replace("-", "_")


def _options(cmd: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in cmd.params if isinstance(p, click.Option) and p.name and not p.hidden}


def _flag_names(opts: dict[str, click.Option]) -> dict[str, str]:
    """A section may also use an option's flag (`target: cpu` for build's
    --target, stored as `targets`): flag name -> option name, where they differ."""
    out = {}
    for name, p in opts.items():
        for flag in p.opts:
            if flag.startswith("--") and _key(flag[2:]) != name and _key(flag[2:]) not in opts:
                out[_key(flag[2:])] = name
    return out


def _check_value(file: Path, where: str, param: click.Option, value: Any, ctx: click.Context) -> Any:
    values = value if (param.multiple or param.nargs != 1) and isinstance(value, list) else [value]
    try:
        for v in values:
            if v is not None:
                param.type.convert(v, param, ctx)
    except click.BadParameter as e:
        raise EdgetuneError(
            f"Config file {file}: key '{where}' has value {value!r}, which is not allowed: {e.message}. "
            f"Expected {param.type.name}" + (" (a list)" if param.multiple else "") + "."
        ) from None
    if param.multiple and not isinstance(value, list):
        value = [value]
    return value


def _commands(group: click.Group, ctx: click.Context) -> dict[str, click.Command]:
    commands = {name: group.get_command(ctx, name) for name in group.list_commands(ctx)}
    return {name: cmd for name, cmd in commands.items() if cmd is not None}


def build_default_map(cfg: dict, group: click.Group, ctx: click.Context, file: Path, prefix: str = "") -> dict:
    """Validate `cfg` against `group`'s commands and return Click's default_map."""
    commands = _commands(group, ctx)
    shared = {k: v for k, v in cfg.items() if k not in commands}
    known_shared = {
        name.replace("_", "-")
        for cmd in commands.values()
        if not isinstance(cmd, click.Group)
        for name in _options(cmd)
    }
    for k in shared:
        if _key(k) not in {_key(n) for n in known_shared}:
            raise EdgetuneError(
                f"Config file {file}: unknown key '{prefix}{k}'. Top-level keys are options shared by commands "
                f"({', '.join(sorted(known_shared))}) or command sections ({', '.join(sorted(commands))})."
            )
    default_map: dict[str, dict] = {}
    for name, cmd in commands.items():
        section = cfg.get(name, {}) or {}
        if not isinstance(section, dict):
            raise EdgetuneError(
                f"Config file {file}: section '{prefix}{name}' must be a mapping of option names to values, not "
                f"{section!r}."
            )
        if isinstance(cmd, click.Group):
            sub_ctx = click.Context(cmd, parent=ctx, info_name=name)
            default_map[name] = build_default_map(section, cmd, sub_ctx, file, f"{prefix}{name}.")
            continue
        opts = _options(cmd)
        m: dict[str, Any] = {}
        for k, v in shared.items():
            if _key(k) in opts:
                m[_key(k)] = _check_value(file, f"{prefix}{k}", opts[_key(k)], v, ctx)
        flags = _flag_names(opts)
        for k, v in section.items():
            key = flags.get(_key(str(k)), _key(str(k)))
            if key not in opts:
                allowed = ", ".join(sorted({n.replace("_", "-") for n in opts} | {f.replace("_", "-") for f in flags}))
                raise EdgetuneError(
                    f"Config file {file}: unknown key '{prefix}{name}.{k}'. The {name} command accepts: {allowed}."
                )
            m[key] = _check_value(file, f"{prefix}{name}.{k}", opts[key], v, ctx)
        default_map[name] = m
    return default_map


def command_options(ctx: click.Context, path: str) -> dict[str, Any]:
    """The options a command would run with, without running it: its defaults,
    overlaid with the config's values. `build` uses this to drive each stage from
    the stage's own section, so `finetune: {epochs: 1}` and `quantize: {epochs: 1}`
    don't collide."""
    root = ctx.find_root()
    cmd: click.Command = root.command
    dmap = root.default_map or {}
    sub_ctx = root
    for part in path.split():
        cmd = cmd.get_command(sub_ctx, part)  # type: ignore[union-attr]
        sub_ctx = click.Context(cmd, parent=sub_ctx, info_name=part)
        dmap = dmap.get(part, {}) if isinstance(dmap, dict) else {}
    values: dict[str, Any] = {}
    for name, p in _options(cmd).items():
        raw = dmap.get(name, p.get_default(sub_ctx, call=True))
        unset = raw is None or type(raw).__name__ == "Sentinel"  # click >= 8.2 marks "no default" with a sentinel
        values[name] = None if unset else p.type_cast_value(sub_ctx, raw)
    return values


def stage_options(ctx: click.Context, stage: str, **overrides):
    """A stage's resolved options for `build` (edgetune.stages.base.StageOptions):
    the command's defaults overlaid with the config section and `overrides`, and
    their YAML-safe record."""
    from edgetune.cli.options import record
    from edgetune.stages.base import StageOptions

    values = {**command_options(ctx, stage), **overrides}
    root = ctx.find_root()
    rec = record(click.Context(root.command.get_command(root, stage), info_name=stage, parent=root), **values)
    rec["command"] = f"edgetune build ({stage} stage)"
    return StageOptions(values, rec)
