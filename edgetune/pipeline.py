"""`edgetune build`: fine-tune -> prune (when configured) -> QAT -> export -> per
target: compile, evaluate the compiled artifact through its runtime session, bundle.

Layout of `--out`:

    finetune/  prune/  quantize/     run directories of the training stages
    export/                          model.fp32.onnx, model.int8.onnx (Q/DQ as quantized: OpenVINO,
                                     TensorRT), model.int8-uint8.onnx (uint8 activations: ONNX Runtime)
    bundle-TARGET/, bundle-TARGET.tar.gz
    gate-TARGET.json, .xml           the accuracy gate's report (with build.max-drop)
    stages/STAGE.json                the cache: each finished stage's inputs hash

One QAT model serves every target of a build: when a target's runtime needs
signed INT8 activations (TensorRT), the quantize stage makes them all signed.
Each export variant is its own stage, so targets needing the same file share it.

A stage's inputs hash covers its resolved options (from the stage's own config
section) and the hash of the stage before it (for fine-tuning: the data), so an
upstream change reruns everything after it. A finished stage with the same hash
is skipped; an interrupted training stage resumes from its last epoch.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import numpy as np

from edgetune import __version__, log
from edgetune.config import command_options
from edgetune.errors import EdgetuneError
from edgetune.runtime.files import read_json, sha256_file, sha256_json, write_json, write_text

logger = log.get(__name__)
STAGES_DIR = "stages"
NOT_HASHED = {"out", "resume", "force", "run-dir", "run_dir", "command", "device", "workers"}  # where, not what
VERSIONED = ("torch", "torchvision", "timm", "nncf", "torch-pruning", "onnx", "onnxruntime", "openvino", "tensorrt", "numpy", "opencv-python-headless")


# --- the stage cache -----------------------------------------------------------

@dataclass
class StageResult:
    name: str
    key: str
    output: dict
    cached: bool


class StageCache:
    """One JSON per finished stage in OUT/stages/; written last, atomically."""

    def __init__(self, out: Path, force: bool):
        self.dir = out / STAGES_DIR
        self.force = force

    def _path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def done(self, name: str, key: str) -> dict | None:
        path = self._path(name)
        if self.force or not path.is_file():
            return None
        rec = read_json(path)
        return rec if rec.get("inputs_hash") == key else None

    def pending_key(self, name: str) -> str | None:
        path = self.dir / f"{name}.pending.json"
        return read_json(path).get("inputs_hash") if path.is_file() else None

    def start(self, name: str, key: str) -> None:
        write_json(self.dir / f"{name}.pending.json", {"stage": name, "inputs_hash": key, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        self._path(name).unlink(missing_ok=True)

    def finish(self, name: str, key: str, output: dict, started: float) -> None:
        write_json(self._path(name), {"stage": name, "inputs_hash": key, "output": output, "seconds": round(time.time() - started, 1),
                                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        (self.dir / f"{name}.pending.json").unlink(missing_ok=True)

    def run(self, name: str, key: str, work: Callable[[bool], dict]) -> StageResult:
        """Skip `name` when finished with this key; else `work(resume)`, where
        resume says an interrupted attempt with the same key can be continued."""
        rec = self.done(name, key)
        if rec is not None:
            logger.info("[bold]%s[/]: unchanged (inputs %s), skipped.", name, key[:12], extra={"markup": True})
            return StageResult(name, key, rec["output"], True)
        resume = not self.force and self.pending_key(name) == key
        logger.info("[bold]%s[/]: %s (inputs %s).", name, "resuming" if resume else "running", key[:12], extra={"markup": True})
        started = time.time()
        self.start(name, key)
        output = work(resume)
        self.finish(name, key, output, started)
        return StageResult(name, key, output, False)


# --- inputs and records -----------------------------------------------------------

def data_fingerprint(data: str) -> str:
    """Cheap identity of the training images: a folder's file names, sizes and
    modification times; a CSV's bytes and the files it lists; else the name."""
    path = Path(data)
    if path.is_dir():
        entries = sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file())
        return sha256_json(entries)
    if path.is_file():
        return sha256_file(path)
    return sha256_json({"data": data, "edgetune": __version__})


def stage_options(ctx: click.Context, stage: str, **overrides) -> tuple[dict, dict]:
    """(options to call the stage with, YAML-safe record) from the stage's config section."""
    from edgetune.cli.options import record

    opts = {**command_options(ctx, stage), **overrides}
    cmd = ctx.find_root().command.get_command(ctx.find_root(), stage)
    rec = record(click.Context(cmd, info_name=stage, parent=ctx.find_root()), **opts)
    rec["command"] = f"edgetune build ({stage} stage)"
    return opts, rec


def stage_key(stage: str, rec: dict, upstream: str) -> str:
    return sha256_json({"stage": stage, "upstream": upstream, "config": {k: v for k, v in rec.items() if k not in NOT_HASHED}})


def fresh_dir(path: Path, resume: bool) -> Path:
    """The stage's directory: kept when resuming, else emptied."""
    if path.exists() and not resume:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def library_versions(names=VERSIONED) -> dict:
    out = {"python": platform.python_version(), "edgetune": __version__}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


# --- the stages -----------------------------------------------------------------

def _training_stage(cache: StageCache, ctx, name: str, out: Path, upstream: str, call: Callable[[dict, dict], Path], **inputs) -> StageResult:
    opts, rec = stage_options(ctx, name, **inputs)
    key = stage_key(name, rec, upstream)

    def work(resume: bool) -> dict:
        d = fresh_dir(out / name, resume)
        call({**opts, "out": d, "resume": resume and (d / "ckpt" / "last.pt").exists(), "force": True}, rec)
        return {"run_dir": name}  # relative to OUT: a build directory can be moved

    return cache.run(name, key, work)


def _finetune(opts: dict, rec: dict) -> Path:
    from edgetune.train.finetune import run_finetune

    return run_finetune(opts, rec)


def _prune(opts: dict, rec: dict) -> Path:
    from edgetune.compress.prune import run_prune

    return run_prune(opts, rec)


def _quantize(opts: dict, rec: dict) -> Path:
    from edgetune.compress.quantize import run_quantize

    return run_quantize(opts, rec)


def quantize_overrides(profiles: list, config: dict) -> dict:
    """The quantize stage's activations: signed int8 when any target's runtime
    needs it (TensorRT has no uint8 Q/DQ), so one QAT model serves every target of
    the build; otherwise the quantize section's own value (default auto)."""
    signed = [p.name for p in profiles if p.activations == "int8" and "int8" in p.precisions]
    if not signed:
        return {}
    asked = (config.get("quantize") or {}).get("activations")
    if asked is not None and asked != "int8":
        raise EdgetuneError(f"Config key 'quantize.activations' is {asked!r}, but target {', '.join(signed)} needs signed int8 activations "
                            "(TensorRT has no uint8 quantization). Set quantize.activations: int8 (or remove the key), or build "
                            f"{', '.join(signed)} in a separate build.")
    return {"activations": "int8"}


def export_name(precision: str, activations: str) -> str:
    """The export variant's stage and file tag: fp32, int8 or int8-uint8."""
    return precision if precision != "int8" or activations == "keep" else f"{precision}-{activations}"


def _export(cache: StageCache, ctx, out: Path, run_dir: Path, upstream: str, precision: str, activations: str) -> StageResult:
    """One export variant (its own cache entry: targets needing the same file share it)."""
    tag = export_name(precision, activations)
    activations = activations if precision == "int8" else "keep"
    opts, rec = stage_options(ctx, "export", precision=precision, activations=activations)
    key = stage_key(f"export-{tag}", rec, upstream)

    def work(resume: bool) -> dict:
        from edgetune.export.onnx import export_onnx

        path = out / "export" / f"model.{tag}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        info = export_onnx(run_dir, path, precision, opts.get("opset") or 17, opts.get("check", True), activations=activations)
        return {"file": f"export/{path.name}", "sha256": sha256_file(path), "info": info}

    return cache.run(f"export-{tag}", key, work)


def _exports_for(profile, target, quantized: bool, export: Callable[[str, str], StageResult]) -> dict[str, StageResult]:
    """The ONNX files a target compiles from: {"int8": its INT8 variant, "fp32": the float one}."""
    wanted = {"int8" if p == "int8" else "fp32" for p in profile.precisions}
    if not quantized:
        wanted = {"fp32"}
    return {p: export(p, target.onnx_activations() if p == "int8" else "keep") for p in sorted(wanted)}


# --- compile, evaluate, bundle ----------------------------------------------------

def evaluate_session(session, pairs: list[tuple[str, int]], classes: list[str], desc: str) -> dict:
    """Test metrics of a runtime session on OpenCV-decoded files: the device's own path."""
    from edgetune.bench.artifacts import session_logits
    from edgetune.metrics import classification_metrics

    logits = session_logits(session, [p for p, _ in pairs], desc=desc)
    m = classification_metrics([y for _, y in pairs], logits, classes)
    return {k: m[k] for k in ("n", "accuracy", "balanced_accuracy", "f1", "roc_auc", "confusion_matrix") if k in m}


def measure_latency(session, spec, threads: int | None = None) -> dict:
    """A quick batch-1 latency of the model call on this machine (bench does it properly)."""
    from edgetune.runtime.timing import Policy, time_call

    x = np.random.default_rng(0).standard_normal((1, 3, *spec.size)).astype(np.float32)
    stats = time_call(lambda: session.run(x), Policy(warmup=5, min_time_s=1.0, min_runs=20)).stats()
    return {"latency_ms_p50": round(stats["p50_ms"], 3), "latency_ms_p90": round(stats["p90_ms"], 3), "latency_machine": platform.processor() or platform.machine(),
            "latency_threads": threads}


def _compile_target(cache: StageCache, out: Path, profile, target, exports: dict[str, StageResult], runs: dict) -> StageResult:
    name = f"bundle-{profile.name}"
    key = sha256_json({"stage": "compile", "profile": {k: v for k, v in profile.to_dict().items() if k != "source"},
                       "upstream": {p: r.key for p, r in exports.items()}, "edgetune": __version__})

    def work(resume: bool) -> dict:
        write_bundle(out, name, target, profile, exports, runs, key)
        return {"bundle": name, "archive": f"{name}.tar.gz"}

    result = cache.run(f"compile-{profile.name}", key, work)
    if result.cached and not (out / result.output["bundle"]).is_dir():  # the bundle was deleted: rebuild it
        cache.force, force = True, cache.force
        result = cache.run(f"compile-{profile.name}", key, work)
        cache.force = force
    return result


def write_bundle(out: Path, name: str, target, profile, exports: dict[str, StageResult], runs: dict, key: str = "") -> Path:
    from edgetune.run import load_run
    from edgetune.runtime.bundle import FORMAT, SCHEMA, load_bundle, pack, write_manifest
    from edgetune.targets.base import CompileInput

    final = load_run(runs["final"])
    spec = final.spec
    onnx = {p: out / r.output["file"] for p, r in exports.items()}
    input_name, input_shape = _onnx_input(onnx.get("int8") or onnx["fp32"])
    if profile.size and tuple(profile.size) != tuple(spec.size):
        raise EdgetuneError(f"Target profile {profile.source}: field 'input.size' is {list(profile.size)} but the model was trained at "
                            f"{list(spec.size)}. Set img-size: {profile.size[0]} in the config, or remove input.size from the profile.")
    staging = out / f".{name}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    arts = target.compile(CompileInput(onnx, final.classes, spec, input_name, input_shape), staging)

    test = final.split.parts["test"]
    eval_runtime = target.eval_runtime()
    for precision, art in arts.items():
        session = target.load(staging, {**art, "runtime": eval_runtime}, spec)
        metrics = {"test": evaluate_session(session, test, final.classes, f"{name} {precision}: test split via {session.name}")}
        metrics.update(measure_latency(session, spec, profile.options.get("threads") or None))
        metrics["evaluated_with"] = session.name
        art["metrics"] = metrics
        logger.info("%s %s via %s: test accuracy %.4f, F1 %.4f, %.2f ms (batch 1, this machine).", name, precision, session.name,
                    metrics["test"]["accuracy"], metrics["test"]["f1"], metrics["latency_ms_p50"])

    main = arts[profile.precision]
    quant_run = load_run(runs["quantize"]) if runs.get("quantize") else None
    macs, params = _macs(runs, spec)
    manifest = {
        "format": FORMAT, "schema": SCHEMA, "edgetune": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "name": name,
        "target": profile.name, "profile": profile.to_dict(), "runtime": profile.runtime, "precision": profile.precision,
        "model": {"backbone": final.model_name, "stage": final.stage, "pruned": bool(runs.get("prune")), "macs": macs, "params": params},
        "classes": final.classes,
        "input": {"name": input_name, "shape": input_shape, "layout": "NCHW", "dtype": "float32",
                  "frames": "uint8 HxWx3 BGR, any size (OpenCV's order); run_frames applies the preprocessing"},
        "preprocess": spec.to_dict(),
        "artifacts": arts,
        "metrics": {**main["metrics"], "pytorch_test": final.test_metrics()},
        "stages": _history(runs, exports, {"target": profile.name, "profile": profile.source, "evaluated_with": target.eval_runtime()}, key),
        "calibration": _calibration(quant_run),
        "versions": library_versions(),
        "source_run": str(Path(runs["final"]).resolve()),
    }
    target.extra_files(staging, manifest)
    write_text(staging / "README.md", device_readme(manifest, target))
    for f in staging.rglob("*"):  # temp files are private (0600); a bundle is for reading by anyone on the device
        if f.is_file():
            f.chmod(0o755 if os.access(f, os.X_OK) else 0o644)
    write_manifest(staging, manifest)
    load_bundle(staging)  # what the device will check, checked here first

    dest = out / name
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    pack(dest, out / f"{name}.tar.gz")
    return dest


def _onnx_input(path: Path) -> tuple[str, list]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    return inp.name, dims


def _macs(runs: dict, spec) -> tuple[int | None, int | None]:
    """MACs/params of the float architecture the bundle runs (pruned when pruned)."""
    from edgetune.models.stats import count_macs
    from edgetune.run import load_run

    run = load_run(runs.get("prune") or runs["finetune"])
    try:
        return count_macs(run.build_model(), tuple(spec.size))
    except Exception as e:  # noqa: BLE001 - a statistic must not fail the build
        logger.warning("Could not count MACs (%s).", str(e).splitlines()[0])
        return None, None


def _history(runs: dict, exports: dict[str, StageResult], compile_config: dict, key: str) -> list[dict]:
    from edgetune.run import load_run

    history: list[dict] = []
    seen = set()
    for stage in ("finetune", "prune", "quantize"):
        if runs.get(stage):
            for rec in load_run(runs[stage]).info.get("history", []):
                ident = (rec.get("stage"), rec.get("inputs_hash"), rec.get("finished"))
                if ident not in seen:
                    seen.add(ident)
                    history.append(rec)
    history.append({"stage": "export", "config": {p: {"activations": (r.output.get("info") or {}).get("activations")} for p, r in exports.items()},
                    "inputs_hash": sha256_json({p: r.key for p, r in exports.items()}),
                    "metrics": {p: {"sha256": r.output["sha256"], **(r.output.get("info") or {})} for p, r in exports.items()}})
    history.append({"stage": "compile", "config": compile_config, "inputs_hash": key, "metrics": {}})
    return history


def _calibration(run) -> dict:
    """The quantize stage's record of its calibration images (hash, recipe, the list)."""
    if run is None:
        return {}
    return dict(run.info.get("calibration") or (run.info.get("quant") or {}).get("calibration") or {})


def device_readme(m: dict, target) -> str:
    spec = m["preprocess"]
    main = m["artifacts"][m["precision"]]
    test = m["metrics"].get("test", {})
    return f"""# {m['name']}: {m['model']['backbone']} for {m['target']}

Built by edgetune {m['edgetune']} on {m['created']}. Classes (logit order): {', '.join(m['classes'])}.
Main artifact: `{main['file']}` ({m['precision']}, {m['runtime']}); test accuracy {test.get('accuracy', float('nan')):.4f},
F1 {test.get('f1', float('nan')):.4f} on {test.get('n', '?')} images, measured through {m['metrics'].get('evaluated_with')}.

## Install (no torch needed)

{target.readme(m)}
## Run

    edgetune inspect {m['name']}                 # checks every file's sha256, shows this bundle
    edgetune infer {m['name']} --source 0        # camera 0

or from Python:

    from edgetune.runtime.bundle import load_bundle
    from edgetune.runtime.preprocess import read_image
    bundle = load_bundle("{m['name']}")          # or the .tar.gz; refuses modified files
    session = bundle.open()
    logits = session.run_frames([read_image("cell.png")])
    print(bundle.classes[int(logits.argmax(1)[0])])

## Preprocessing (done by the runtime; listed for your own code)

Resize the whole frame to {spec['size'][0]}x{spec['size'][1]} ({spec['interpolation']}, no crop) in float,
{spec['channel_order']} channel order, divide by 255, subtract mean {spec['mean']}, divide by std {spec['std']},
layout NCHW float32, input `{m['input']['name']}` shaped {m['input']['shape']}.

`manifest.json` records everything else: stages, configs, versions, hashes.
"""


# --- the command ---------------------------------------------------------------

def runs_from(path: Path, quant_in: dict, overrides: dict | None) -> tuple[dict[str, Path], str]:
    """`build --from RUN`: the training stages an existing run (and, for a
    quantized run, its float parent: the gate's reference) stands in for, and the
    inputs hash the stages after it build on: its weights'."""
    from edgetune.run import is_run, load_run

    if overrides:
        raise EdgetuneError(f"--from {path} starts from a trained run, so {', '.join('--' + k.replace('_', '-') for k in overrides)} "
                            "(what fine-tuning trains) cannot apply. Remove them, or build without --from.")
    run = load_run(path)
    chain = [run]
    if run.quantized:
        parent = run.info.get("parent")
        if not parent or not is_run(parent):
            raise EdgetuneError(f"--from {path} is a quantized run whose float parent ({parent or 'not recorded'}) is not on this machine; the build "
                                "needs it as the accuracy reference and for the model's MACs and history. Build from the float run instead "
                                "(QAT then runs in the build).")
        chain.append(load_run(parent))
        made = (run.info.get("quant") or {}).get("activations")
        if quant_in.get("activations") == "int8" and made != "int8":
            raise EdgetuneError(f"--from {path} was quantized with --activations {made}, but a target here (TensorRT) needs signed int8 "
                                f"activations. Quantize again with `edgetune quantize {parent} --activations int8`, or build from {parent}.")
    stages = {"float": "finetune", "pruned": "prune", "qat": "quantize", "ptq": "quantize"}
    runs = {stages[r.stage]: r.dir.resolve() for r in chain}
    logger.info("Starting from the %s run %s: %s not rerun.", run.stage, path, ", ".join(sorted(runs)))
    return runs, sha256_json({"from": run.stage, "weights": sha256_file(run.dir / "model.pt")})


def build(ctx: click.Context, targets: list[str], out: Path, force: bool = False, overrides: dict | None = None,
          max_drop: float | None = None, min_agreement: float = 0.99, start: Path | None = None) -> dict[str, Path]:
    """Run the pipeline for `targets`; with `max_drop`, gate every bundle against
    its float model afterwards (a failed gate raises, exit status 1). With
    `start`, an existing run replaces the training stages up to its own."""
    from edgetune.targets.profile import load_profile
    from edgetune.targets.registry import get_target

    profiles = [load_profile(t) for t in targets]
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise EdgetuneError(f"--target names a profile twice: {', '.join(names)}.")
    plugins = {p.name: get_target(p) for p in profiles}
    for p in profiles:  # before any training: a missing runtime fails now, not an hour later
        if p.runtime != "tensorrt":
            plugins[p.name].require()
    config = (ctx.find_root().obj or {}).get("config") or {}
    if "activations" in (config.get("export") or {}):
        raise EdgetuneError("Config key 'export.activations' does not apply to build: each target takes the INT8 export its runtime runs "
                            "best (uint8 activations for ONNX Runtime, as quantized for OpenVINO and TensorRT). Remove the key.")
    quant_in = quantize_overrides(profiles, config)  # before any training too
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = StageCache(out, force)
    started = time.time()

    if start is not None:
        runs, upstream = runs_from(Path(start), quant_in, overrides)
    else:
        ft_opts, _ = stage_options(ctx, "finetune", **(overrides or {}))
        r = _training_stage(cache, ctx, "finetune", out, data_fingerprint(str(ft_opts["data"])), _finetune, **(overrides or {}))
        runs, upstream = {"finetune": out / r.output["run_dir"]}, r.key
    if "prune" in config and set(runs) == {"finetune"}:
        prune_in = {"run_dir": runs["finetune"]}
        if "round-to" not in (config.get("prune") or {}) and "round_to" not in (config.get("prune") or {}):
            prune_in["round_to"] = max(p.channel_multiple for p in profiles)  # the targets' preferred channel multiple
        r = _training_stage(cache, ctx, "prune", out, upstream, _prune, **prune_in)
        runs["prune"], upstream = out / r.output["run_dir"], r.key
    runs["float"] = runs.get("prune") or runs["finetune"]
    if "quantize" not in runs and any("int8" in p.precisions for p in profiles):  # profiles asking for float only skip QAT
        r = _training_stage(cache, ctx, "quantize", out, upstream, _quantize, run_dir=Path(runs["float"]), **quant_in)
        runs["quantize"], upstream = out / r.output["run_dir"], r.key
    runs["final"] = runs.get("quantize") or runs["float"]

    exports: dict[tuple[str, str], StageResult] = {}  # (precision, activations) -> the export: each variant once

    def export(precision: str, activations: str) -> StageResult:
        if (precision, activations) not in exports:
            exports[precision, activations] = _export(cache, ctx, out, Path(runs["final"]), upstream, precision, activations)
        return exports[precision, activations]

    bundles = {}
    for p in profiles:
        res = _compile_target(cache, out, p, plugins[p.name], _exports_for(p, plugins[p.name], bool(runs.get("quantize")), export), runs)
        bundles[p.name] = out / res.output["bundle"]
    _summary(bundles, time.time() - started)
    if max_drop is not None:
        gate_bundles(out, bundles, Path(runs["float"]), max_drop, min_agreement)
    return bundles


def gate_bundles(out: Path, bundles: dict[str, Path], reference: Path, max_drop: float, min_agreement: float) -> dict:
    """The CI gate (`edgetune compare`'s) on every bundle: its compiled artifact,
    through the session that evaluated it, against the float model's PyTorch
    logits on the test split. Writes OUT/gate-TARGET.json and .xml (JUnit);
    raises EdgetuneError (exit status 1) naming each failed gate."""
    from edgetune.bench.artifacts import session_logits
    from edgetune.compare import gate, junit_xml, print_result
    from edgetune.evaluate import predict_split
    from edgetune.run import load_run
    from edgetune.runtime.bundle import load_bundle

    ref = load_run(reference)
    ref_logits, labels = predict_split(ref.build_model(), ref.split, ref.spec, "test")
    paths = [p for p, _ in ref.split.parts["test"]]
    results, failed = {}, []
    for target, path in bundles.items():
        b = load_bundle(path)
        session = b.open(runtime=b.metrics.get("evaluated_with"))
        cand = session_logits(session, paths, desc=f"gate {b.name}")
        result = gate(ref_logits, cand, labels, ref.classes, max_drop, min_agreement,
                      names={"reference": f"{ref.dir.name} (pytorch, {ref.stage})", "candidate": f"{b.name} ({session.name}, {b.precision})"})
        print_result(result)
        write_json(out / f"gate-{target}.json", result.to_dict())
        write_text(out / f"gate-{target}.xml", junit_xml(result))
        results[target] = result
        failed += [f"{target}: {c.message}" for c in result.checks if not c.passed]
    if failed:
        raise EdgetuneError("The accuracy gate (build.max-drop / build.min-agreement) failed; the bundles are written but should not ship:\n  - "
                            + "\n  - ".join(failed) + f"\nReports: {out}/gate-TARGET.json.", exit_code=1)
    return results


def _summary(bundles: dict[str, Path], seconds: float) -> None:
    from rich.table import Table

    from edgetune.runtime.bundle import load_bundle

    table = Table(title=f"Build finished in {seconds / 60:.1f} min", title_justify="left")
    for col in ("target", "bundle", "precision", "test accuracy", "F1", "latency p50 (this machine)", "via"):
        table.add_column(col)
    for name, path in bundles.items():
        b = load_bundle(path)
        m = b.metrics
        table.add_row(name, f"{path}.tar.gz" if Path(f"{path}.tar.gz").exists() else str(path), b.precision, f"{m['test']['accuracy']:.4f}",
                      f"{m['test']['f1']:.4f}", f"{m['latency_ms_p50']:.2f} ms", m.get("evaluated_with", "?"))
    log.console.print(table)
    # One plain line per bundle for scripts and CI logs (stdout).
    for name, path in bundles.items():
        m = load_bundle(path, verify=False).metrics
        click.echo(f"bundle {path} accuracy {m['test']['accuracy']:.4f} latency_ms {m['latency_ms_p50']:.2f} ({name}, {m.get('evaluated_with')})")
