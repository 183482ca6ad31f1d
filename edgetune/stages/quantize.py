"""The `quantize` stage: INT8 quantizers calibrated on a recipe's images
(compress/quantize.py's mechanics), then for QAT fine-tuned through the training
loop; the run keeps NNCF's config and the calibration record."""

from __future__ import annotations

import time

import torch

from edgetune import log
from edgetune.compress.calibration import load_recipe, select
from edgetune.compress.quantize import broadcast_quantizers, calibration_tensors, quantize_model, rebuild_quantized
from edgetune.stages import common
from edgetune.train import distributed
from edgetune.train.loop import fit

logger = log.get(__name__)


def run_quantize(opts: dict, config_record: dict):
    """The `quantize` command: PTQ (calibration only) or QAT (calibration + fit)."""
    started = time.time()
    mode = opts["mode"]
    recipe = load_recipe(opts["calibration"])
    parent, out = common.begin(opts, mode, config_record)
    model = parent.build_model()
    before = parent.test_metrics() or common.test_metrics(model, parent)
    pairs, calib = select(parent.split, recipe, opts.get("calib_count"))
    logger.info(
        "Calibrating INT8 quantizers of %s on %d images (recipe '%s', hash %s).",
        parent.model_name,
        calib["count"],
        recipe.name,
        calib["hash"][:12],
    )
    qmodel, quant = _calibrate_once(model, lambda: calibration_tensors(parent, pairs), tuple(parent.spec.size), opts)
    quant["mode"] = mode
    metrics = {"float_test": before, "calibration_test": common.test_metrics(qmodel, parent)}
    metrics["test"] = metrics["calibration_test"]  # PTQ: the calibrated model is the result
    if mode == "qat" and opts["epochs"] > 0:
        cfg = common.train_config(opts)
        train, val = common.datasets(parent, opts)
        result = fit(
            qmodel,
            train,
            val,
            common.hooks(parent, cfg, train),
            cfg,
            out / "ckpt",
            resume=opts.get("resume", False),
            desc="qat",
            teacher=common.teacher(opts, parent),
            score_start=True,  # the calibrated model is a candidate too
        )
        metrics.update(
            best_epoch=result.best_epoch,
            val_best=result.best_metric,
            kept_epoch=result.kept_epoch,
            epochs=result.history,
        )
        metrics["test"] = common.test_metrics(qmodel.cpu().eval(), parent)
    qmodel.cpu().eval()
    common.finish(
        out,
        parent,
        mode,
        qmodel,
        config_record,
        metrics,
        started,
        trained=mode == "qat" and opts["epochs"] > 0,
        quant=quant,
        calibration=calib,
    )
    _summary(parent, out, mode, metrics, calib)
    return out


def _calibrate_once(model: torch.nn.Module, tensors, size: tuple[int, int], opts: dict):
    """`quantize_model` on the calibration images (`tensors()`), run once: under
    torchrun rank 0 calibrates, the other ranks place the same quantizers from its
    NNCF config and receive their parameters by NNCF's broadcast; then every rank
    checks that it holds the same model."""
    made = {}

    def calibrate() -> dict:
        made["model"], record = quantize_model(
            model,
            tensors(),
            size,
            opts.get("ignore") or [],
            opts.get("fold_bn", True),
            opts.get("overflow_fix") or "enable",
            opts.get("activations") or "auto",
        )
        return record

    record = distributed.on_main(calibrate)
    if not distributed.active():
        return made["model"], record
    qmodel = made["model"] if "model" in made else rebuild_quantized(model, record, size)
    distributed.broadcast_state(qmodel)  # NNCF's Fast Bias Correction rewrote biases on rank 0 while calibrating
    broadcast_quantizers(qmodel, distributed.collective_device())
    distributed.check_same(qmodel, "The calibrated INT8 model")
    return qmodel, record


def _summary(parent, out, mode, metrics, calib) -> None:
    from rich.table import Table

    t = Table(title=f"{mode.upper()} INT8: {parent.model_name} -> {out}")
    task = parent.task_impl
    for col in ("model", f"test {task.metric}", "test"):
        t.add_column(col, justify="right" if col != "model" else "left")
    rows = [("float (parent)", metrics["float_test"]), ("after calibration", metrics["calibration_test"])]
    if mode == "qat":
        rows.append(("after QAT", metrics["test"]))
    for name, m in rows:
        t.add_row(name, f"{m.get(task.metric, float('nan')):.4f}", task.session.headline(m))
    if not log.quiet():
        log.print_table(t)
        log.console.print(
            f"Calibrated on {calib['count']} images"
            + (f" ({calib['short']} fewer than the recipe asks)" if calib["short"] else "")
            + f", hash {calib['hash'][:16]}."
        )
