"""The `prune` stage: structured pruning in steps (compress/prune.py's
mechanics), each step followed by recovery fine-tuning through the training loop,
a checkpoint per finished step (resume), and the run's layer shapes."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from edgetune import log
from edgetune.compress.prune import check_prunable, prune_once, ratio_for_macs, step_ratios
from edgetune.compress.shapes import apply_shapes, record_shapes
from edgetune.errors import EdgetuneError
from edgetune.models.stats import count_macs
from edgetune.runtime.files import write_json
from edgetune.stages import common
from edgetune.train import distributed
from edgetune.train.loop import fit, save_atomic

logger = log.get(__name__)


def _resume_point(out, steps: int):
    """The last finished step saved in `out/ckpt` (its number, arch, weights), if any."""
    for k in range(steps, 0, -1):
        path = out / "ckpt" / f"step{k}.pt"
        if path.exists():
            return k, torch.load(path, map_location="cpu", weights_only=True)
    return 0, None


def run_prune(opts: dict, config_record: dict):
    """The `prune` command: prune in steps, each followed by recovery fine-tuning."""
    started = time.time()
    if sum(opts.get(k) is not None for k in ("ratio", "target_macs", "target_latency")) != 1:
        raise EdgetuneError(
            "Give exactly one of --ratio (share of channels to remove, e.g. 0.3), --target-macs (share of MACs to "
            "remove, e.g. 0.5) or --target-latency (share of the target runtime's latency to remove, e.g. 0.3)."
        )
    parent, out = common.begin(opts, "pruned", config_record)
    size = tuple(parent.spec.size)
    model = parent.build_model()
    keep = parent.task_impl.prune_ignored(model)  # the task's prediction layers, besides a timm classifier
    check_prunable(model, parent.model_name)
    teacher = common.teacher(opts, parent)
    macs0, params0 = count_macs(model, size)
    before = parent.test_metrics() or common.test_metrics(model, parent)
    steps, round_to, imp = opts["steps"], opts["round_to"], opts["importance"]
    ratio, groups, plan = opts.get("ratio"), {}, None
    if opts.get("target_macs") is not None:
        ratio = ratio_for_macs(model, size, opts["target_macs"], round_to, imp, steps, keep)
        logger.info("--target-macs %.2f: pruning %.1f%% of the channels.", opts["target_macs"], 100 * ratio)
    elif opts.get("target_latency") is not None:
        plan = distributed.on_main(lambda: _latency_plan(opts, parent, model, out, keep))
        ratio, groups = 0.0, plan["ratios"]
    cfg = common.train_config(opts)
    done, saved = distributed.on_main(lambda: _resume_point(out, steps) if opts.get("resume") else (0, None))
    if saved is not None:
        apply_shapes(model, saved["arch"])
        model.load_state_dict(saved["state"])
        logger.info("Resuming pruning after step %d of %d.", done, steps)
    history = saved["history"] if saved is not None else []
    for k, r in enumerate(step_ratios(ratio, steps), start=1):
        if k <= done:
            continue
        torch.manual_seed(cfg.seed * 100003 + k)  # --importance random: the same channels on every rank
        prune_once(model, size, r, round_to, imp, {g: step_ratios(gr, steps)[k - 1] for g, gr in groups.items()}, keep)
        distributed.check_same(model, f"The model pruned in step {k}")
        macs, params = count_macs(model, size)
        logger.info(
            "Prune step %d/%d: %.3f -> %.3f GMACs, %.2fM parameters.", k, steps, macs0 / 1e9, macs / 1e9, params / 1e6
        )
        row = {"step": k, "ratio": r, "macs": macs, "params": params}
        if cfg.epochs > 0:
            train, val = common.datasets(parent, opts)
            result = fit(
                model,
                train,
                val,
                common.hooks(parent, cfg, train),
                cfg,
                out / "ckpt" / f"step{k}",
                resume=False,
                desc=f"prune step {k}/{steps} recovery",
                teacher=teacher,
            )
            row.update(
                best_epoch=result.best_epoch,
                val_best=result.best_metric,
                kept_epoch=result.kept_epoch,
                epochs=result.history,
            )
        history.append(row)
        model.cpu()
        if distributed.is_main():
            save_atomic(
                {"arch": record_shapes(model), "state": model.state_dict(), "history": history},
                out / "ckpt" / f"step{k}.pt",
            )
    model.cpu().eval()
    macs1, params1 = count_macs(model, size)
    after = common.test_metrics(model, parent)
    metrics = {
        "before": {"macs": macs0, "params": params0, "test": before},
        "after": {"macs": macs1, "params": params1, "test": after},
        "ratio": ratio,
        "round_to": round_to,
        "importance": imp,
        "steps": history,
        "test": after,
    }
    if plan is not None:
        metrics["latency"] = {
            k: plan[k] for k in ("target", "runtime", "precision", "base_ms", "measured_ms", "reduction", "ratios")
        }
    if distributed.is_main():
        write_json(
            out / "prune.json",
            {k: metrics[k] for k in ("before", "after", "ratio", "round_to", "importance", "latency") if k in metrics},
        )
    common.finish(
        out, parent, "pruned", model, config_record, metrics, started, trained=cfg.epochs > 0, arch=record_shapes(model)
    )
    _summary(parent, out, metrics)
    return out


def _latency_plan(opts: dict, parent, model, out, keep: list) -> dict:
    """The measured per-group ratios for --target-latency: computed once, kept in
    OUT/latency_plan.json (a resumed run takes them from there, not from new timings)."""
    from edgetune.runtime.files import read_json
    from edgetune.stages.latency_plan import make_probe, plan_ratios

    path = out / "latency_plan.json"
    wanted = {
        "target": opts["target_latency"],
        "runtime": opts["latency_runtime"],
        "precision": opts["latency_precision"],
    }
    if opts.get("resume") and path.is_file():
        plan = read_json(path)
        if all(plan.get(k) == v for k, v in wanted.items()):
            return plan
    with tempfile.TemporaryDirectory(prefix="latency-", dir=out) as tmp:  # the candidates' ONNX files
        probe = make_probe(
            parent, opts["latency_runtime"], opts["latency_precision"], opts.get("latency_threads"), Path(tmp)
        )
        plan = plan_ratios(model, probe, opts["target_latency"], opts["round_to"], opts["importance"], keep)
    write_json(path, plan)
    return plan


def _summary(parent, out, m) -> None:
    from rich.table import Table

    t = Table(title=f"Pruned {parent.model_name}: {out}")
    metric = parent.task_impl.metric
    for col in ("", "MACs", "parameters", f"test {metric}", "test"):
        t.add_column(col, justify="right")
    for name in ("before", "after"):
        r = m[name]
        t.add_row(
            name,
            f"{r['macs'] / 1e6:.2f} M",
            f"{r['params'] / 1e6:.3f} M",
            f"{r['test'].get(metric, float('nan')):.4f}",
            parent.task_impl.session.headline(r["test"]),
        )
    b, a = m["before"], m["after"]
    t.add_row(
        "change",
        f"{100 * (a['macs'] / b['macs'] - 1):+.1f}%",
        f"{100 * (a['params'] / b['params'] - 1):+.1f}%",
        f"{a['test'].get(metric, 0) - b['test'].get(metric, 0):+.4f}",
        "",
    )
    if not log.quiet():
        log.print_table(t)
