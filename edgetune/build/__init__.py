"""`edgetune build`: the stages of build/plan.py run in a loop through the stage
cache, then the accuracy gate (`edgetune compare`'s) on every bundle.

Layout of `--out`:

    finetune/  prune/  quantize/     run directories of the training stages
    export/                          model.fp32.onnx, model.int8.onnx (Q/DQ as quantized: OpenVINO,
                                     TensorRT), model.int8-uint8.onnx (uint8 activations: ONNX Runtime)
    bundle-TARGET/, bundle-TARGET.tar.gz
    gate-TARGET.json, .xml           the accuracy gate's report (with build.max-drop)
    stages/STAGE.json                the cache: each finished stage's inputs hash

A stage's inputs hash covers its resolved options and the hashes of the stages it
takes (for fine-tuning: the data), so an upstream change reruns everything after
it. A finished stage with the same hash is skipped; an interrupted training stage
resumes from its last epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from edgetune import log
from edgetune.build.cache import StageCache
from edgetune.build.plan import plan, quantize_overrides
from edgetune.errors import EdgetuneError
from edgetune.stages.base import Result, StageOptions
from edgetune.train import distributed

logger = log.get(__name__)
STAGE_OF_RUN = {"float": "finetune", "pruned": "prune", "qat": "quantize", "ptq": "quantize"}


@dataclass
class BuildRequest:
    """What `build` is asked: resolved options, no command-line parsing.
    `options`: each stage's (finetune, prune, quantize, export); `config`: what the
    user's config file set, by section (to tell a default from a choice)."""

    targets: list[str]
    out: Path
    options: dict[str, StageOptions]
    config: dict = field(default_factory=dict)
    force: bool = False
    max_drop: float | None = None
    min_agreement: float = 0.99
    start: Path | None = None  # --from: an existing run stands in for the training stages up to its own
    precision: str | None = None  # --precision: every bundle's main artifact, whatever the timings say
    overrides: dict = field(default_factory=dict)  # --data/--model/--img-size as given


def build(req: BuildRequest) -> dict[str, Path]:
    """Run the stages for `req.targets`; returns target -> bundle directory. With
    `max_drop`, gate every bundle against its float model afterwards (a failed
    gate raises, exit status 1)."""
    from edgetune.targets.profile import load_profile
    from edgetune.targets.registry import get_target

    profiles = [load_profile(t) for t in req.targets]
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise EdgetuneError(f"--target names a profile twice: {', '.join(names)}.")
    plugins = {p.name: get_target(p) for p in profiles}
    for p in profiles:  # before any training: a profile that cannot work fails now, not an hour later
        plugins[p.name].check_profile()
        if req.precision and req.precision not in p.precisions:
            raise EdgetuneError(
                f"--precision {req.precision}: target {p.name} builds {', '.join(p.precisions)} (its profile's "
                f"precision and fallback). Choose one of those, or add {req.precision} to the profile's fallback."
            )
    out = Path(req.out).resolve()
    given = runs_from(Path(req.start), quantize_overrides(profiles, req.config), req.overrides) if req.start else {}
    task = task_of(req)
    stages = plan(req.options, req.config, profiles, plugins, tuple(given), task, req.precision)
    # Under torchrun the training stages run on every rank, the others on rank 0 alone.
    finetune = req.options.get("finetune")
    distributed.setup((finetune.values.get("device") if finetune else None) or "auto")
    distributed.on_main(lambda: out.mkdir(parents=True, exist_ok=True))
    cache = StageCache(out, req.force)
    started = time.time()
    results: dict[str, Result] = dict(given)
    for stage in stages:
        if not stage.distributed and not distributed.leave():
            return {}  # the other ranks have trained their part: export, compile and bundles are rank 0's
        results[stage.name] = cache.run(stage, [results[name] for name in stage.inputs])
    bundles = {p.name: out / results[f"compile-{p.name}"].output["bundle"] for p in profiles}
    summary(task, bundles, time.time() - started)
    max_drop = task.default_max_drop if task.always_gated and req.max_drop is None else req.max_drop
    if max_drop is not None:
        reference = out / (results.get("prune") or results["finetune"]).output["run_dir"]
        gate_bundles(out, bundles, reference, max_drop, req.min_agreement)
    return bundles


def task_of(req: BuildRequest):
    """The build's task (`edgetune.tasks.base.Task`): the --from run's own, else finetune's --task."""
    from edgetune import tasks

    if req.start:
        from edgetune.run import load_run

        return load_run(req.start).task_impl
    return tasks.get(req.options["finetune"].values.get("task") or tasks.DEFAULT)


def runs_from(path: Path, quant_in: dict, overrides: dict) -> dict[str, Result]:
    """`build --from RUN`: results standing in for the training stages up to the
    run's own (and, for a quantized run, its float parent: the gate's reference),
    keyed by the run's weights. Overrides equal to the run's own values pass."""
    from edgetune.run import is_run, load_run
    from edgetune.runtime.files import sha256_file, sha256_json

    run = load_run(path)
    own = {"data": run.split.source, "model": run.model_name, "img_size": run.spec.size[0]}
    differ = {k: v for k, v in overrides.items() if str(v) != str(own.get(k))}
    if differ:
        raise EdgetuneError(
            f"--from {path} starts from a trained run, so "
            + ", ".join(f"--{k.replace('_', '-')} {v!r} (the run has {own.get(k)!r})" for k, v in differ.items())
            + " cannot apply: fine-tuning is not rerun. Remove them (from the command line or the config's top level) "
            "or set them to the run's values, or build without --from."
        )
    chain = [run]
    if run.quantized:
        parent = run.info.get("parent")
        if not parent or not is_run(parent):
            raise EdgetuneError(
                f"--from {path} is a quantized run whose float parent ({parent or 'not recorded'}) is not on this "
                "machine; the build needs it as the accuracy reference and for the model's MACs and history. Build "
                "from the float run instead (QAT then runs in the build)."
            )
        chain.append(load_run(parent))
        made = (run.info.get("quant") or {}).get("activations")
        if quant_in.get("activations") == "int8" and made != "int8":
            raise EdgetuneError(
                f"--from {path} was quantized with --activations {made}, but a target here (TensorRT) needs signed "
                f"int8 activations. Quantize again with `edgetune quantize {parent} --activations int8`, or build "
                f"from {parent}."
            )
    key = sha256_json({"from": run.stage, "weights": sha256_file(run.dir / "model.pt")})
    given = {
        STAGE_OF_RUN[r.stage]: Result(STAGE_OF_RUN[r.stage], key, {"run_dir": str(r.dir.resolve())}, cached=True)
        for r in chain
    }
    logger.info("Starting from the %s run %s: %s not rerun.", run.stage, path, ", ".join(sorted(given)))
    return given


def gate_bundles(out: Path, bundles: dict[str, Path], reference: Path, max_drop: float, min_agreement: float) -> dict:
    """The CI gate (`edgetune compare` itself) on every bundle: its compiled
    artifact, through the runtime that evaluated it, against the float model's
    PyTorch logits on the test split. Writes OUT/gate-TARGET.json and .xml
    (JUnit); raises EdgetuneError (exit status 1) naming each failed gate."""
    from edgetune.compare import run_compare
    from edgetune.runtime.bundle import load_bundle

    results, failed = {}, []
    for target, path in bundles.items():
        runtime = load_bundle(path, verify=False).metrics.get("evaluated_with")
        result = run_compare(
            reference,
            path,
            None,
            max_drop,
            min_agreement,
            None,
            junit=out / f"gate-{target}.xml",
            md=None,
            json_file=out / f"gate-{target}.json",
            runtime=runtime,
        )
        results[target] = result
        failed += [f"{target}: {c.message}" for c in result.checks if not c.passed]
    if failed:
        raise EdgetuneError(
            "The accuracy gate (build.max-drop / build.min-agreement) failed; the bundles are written but should not "
            "ship:\n  - " + "\n  - ".join(failed) + f"\nReports: {out}/gate-TARGET.json.",
            exit_code=1,
        )
    return results


def summary(task, bundles: dict[str, Path], seconds: float) -> None:
    """A table for people, then one plain line per bundle with its whole path
    (stdout, for scripts and CI logs: never cut to the terminal's width)."""
    import click
    from rich.table import Table

    from edgetune.runtime.bundle import load_bundle

    table = Table(title=f"Build finished in {seconds / 60:.1f} min", title_justify="left")
    for col in ("target", "precision", f"test {task.metric}", "test metrics", "latency p50 (this machine)", "via"):
        table.add_column(col, no_wrap=col in ("target", "precision", "via"))
    loaded = {name: load_bundle(path) for name, path in bundles.items()}
    metrics = {name: b.metrics for name, b in loaded.items()}
    for name in bundles:
        m = metrics[name]
        table.add_row(
            name,
            loaded[name].precision,
            _num(m["test"].get(task.metric)),
            task.session.headline(m["test"]),
            f"{m['latency_ms_p50']:.2f} ms",
            m.get("evaluated_with", "?"),
        )
    log.print_table(table)
    for name, b in loaded.items():
        for note in ((b.manifest.get("precision_choice") or {}).get("note"), task.session.build_note(b.manifest)):
            if note:
                log.console.print(f"[yellow]{name}[/yellow]: {note}")
    for name, path in bundles.items():
        m = metrics[name]
        archive = f" (archive {path}.tar.gz)" if Path(f"{path}.tar.gz").exists() else ""
        click.echo(
            f"bundle {path} {task.metric} {_num(m['test'].get(task.metric))} latency_ms {m['latency_ms_p50']:.2f} "
            f"({name}, {m.get('evaluated_with')}, main {loaded[name].precision}){archive}"
        )


def _num(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"
