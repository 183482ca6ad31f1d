"""`edgetune inspect`: a bundle's manifest, readably (rich tables). Torch-free:
it runs on the device too. The schema is documented in `edgetune.runtime.bundle`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from edgetune.runtime.bundle import Bundle, artifact_manifest
from edgetune.runtime.tasks import session_class


def _num(v, unit: str = "") -> str:
    if not isinstance(v, (int, float)):
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{suffix}{unit}"
    return f"{v:g}{unit}"


def _headline(metrics: dict, task) -> str:
    """Test metrics as the bundle's task words them, and the latency."""
    test = metrics.get("test") or {}
    parts = [task.headline(test)] if test else []
    if "latency_ms_p50" in metrics:
        parts.append(f"{metrics['latency_ms_p50']:.2f} ms p50")
    return ", ".join(parts) or "-"


def describe(bundle: Bundle, console: Console) -> None:
    m = bundle.manifest
    task = session_class(bundle.task)
    model = m.get("model", {})
    inp = m.get("input", {})
    spec = m["preprocess"]
    console.print(
        f"[bold]{bundle.name}[/] ({bundle.root})  files verified: "
        f"{'[green]yes[/]' if bundle.verified else '[yellow]not checked[/]'}"
    )
    console.print(
        f"target [bold]{m['target']}[/] ({m.get('profile', {}).get('description', '')}); runtime {m['runtime']}, main "
        f"precision {m['precision']}"
    )
    console.print(
        f"model {model.get('backbone', '?')} ({model.get('stage', '?')}{', pruned' if model.get('pruned') else ''}), "
        f"{_num(model.get('macs'))} MACs, {_num(model.get('params'))} parameters; built by edgetune "
        f"{m.get('edgetune')} on {m.get('created', '?')}"
    )
    console.print(f"classes ({len(m['classes'])}): {', '.join(m['classes'])}")
    # the task's values as the main artifact reads them (an anomaly artifact's own threshold)
    own = artifact_manifest(m, bundle.artifact())
    console.print(task.describe(own) or f"task {bundle.task}: outputs {', '.join(task.outputs)}")
    choice = m.get("precision_choice") or {}
    if choice.get("note"):
        console.print(f"[yellow]main precision[/yellow]: {choice['note']}")
    console.print(
        f"input {inp.get('name', '?')} {inp.get('shape')} {inp.get('layout', 'NCHW')} {inp.get('dtype', 'float32')}; "
        f"preprocessing: resize whole {spec.get('resize_dtype', 'float32')} frame to "
        f"{spec['size'][0]}x{spec['size'][1]} ({spec.get('interpolation')}), {spec.get('channel_order', 'RGB')}, "
        f"/255, mean {[round(x, 4) for x in spec['mean']]}, std {[round(x, 4) for x in spec['std']]}"
    )
    console.print(
        f"test metrics of the compiled artifact: {_headline(m.get('metrics', {}), task)}"
        + (
            f"  (PyTorch model: {_headline({'test': m['metrics']['pytorch_test']}, task)})"
            if m.get("metrics", {}).get("pytorch_test")
            else ""
        )
    )

    arts = Table(title="Artifacts", title_justify="left")
    for col in ("precision", "files", "size", "preprocessing", "test metrics", "latency p50", "evaluated with"):
        arts.add_column(col)
    for precision, a in m["artifacts"].items():
        met = a.get("metrics", {})
        arts.add_row(
            precision + (" (main)" if precision == m["precision"] else ""),
            a["file"] + (f" (+{len(a.get('files', [])) - 1})" if len(a.get("files", [])) > 1 else ""),
            _num(a.get("size_bytes"), "B"),
            "runtime (OpenCV); the IR has its own too" if a.get("preprocess_built_in") else "runtime (OpenCV)",
            task.headline(met["test"]) if met.get("test") else "-",
            f"{met['latency_ms_p50']:.2f} ms" if "latency_ms_p50" in met else "-",
            met.get("evaluated_with", "-")
            + (f" (ran {met['inference_precision']})" if met.get("inference_precision") else ""),
        )
    console.print(arts)

    stages = Table(title="Stages", title_justify="left")
    for col in ("stage", "inputs hash", "seconds", "result"):
        stages.add_column(col)
    for s in m.get("stages", []):
        met = s.get("metrics") or {}
        stages.add_row(
            s.get("stage", "?"),
            str(s.get("inputs_hash", ""))[:12],
            str(s.get("seconds", "-")),
            _headline(met, task)
            if met.get("test")
            else ", ".join(f"{k} {v}" for k, v in met.items() if isinstance(v, (int, float, str)))[:80] or "-",
        )
    console.print(stages)

    cal = m.get("calibration") or {}
    if cal:
        console.print(
            f"calibration: {cal.get('count', '?')} images, hash {str(cal.get('hash', '?'))[:16]}"
            + (f", recipe {cal['recipe']}" if cal.get("recipe") else "")
        )
    versions = m.get("versions") or {}
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    if m.get("source_run"):
        console.print(f"source run: {m['source_run']}")
    console.print(f"{len(m['files'])} files with sha256 in manifest.json")
