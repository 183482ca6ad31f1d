"""What bench, compare and verify take as input: a run directory (its PyTorch
model) or a bundle (directory or .tar.gz, through its runtime session), the
labelled images to measure them on, and their task's typed results on them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetune import log
from edgetune.errors import EdgetuneError
from edgetune.run import Run, is_run, load_run
from edgetune.runtime.bundle import Bundle, load_bundle
from edgetune.runtime.preprocess import PreprocessSpec

logger = log.get(__name__)


@dataclass
class Artifact:
    path: Path
    run: Run | None = None
    bundle: Bundle | None = None
    runtime: str | None = (
        None  # a bundle's session runtime, when not its own (a Jetson bundle's ONNX through ONNX Runtime)
    )
    precision: str | None = None  # which artifact of a bundle; None: its main one

    @property
    def kind(self) -> str:
        return "run" if self.run else "bundle"

    @property
    def classes(self) -> list[str]:
        return self.run.classes if self.run else self.bundle.classes

    @property
    def spec(self) -> PreprocessSpec:
        return self.run.spec if self.run else self.bundle.spec

    @property
    def label(self) -> str:
        if self.run:
            return f"{self.path.name} (pytorch, {self.run.stage})"
        return f"{self.bundle.name} ({self.runtime or self.bundle.runtime}, {self.precision or self.bundle.precision})"

    @property
    def task(self):
        """The artifact's task, its build half (`edgetune.tasks.base.Task`)."""
        from edgetune import tasks

        return self.run.task_impl if self.run else tasks.get(self.bundle.task)

    @property
    def manifest(self) -> dict:
        """A bundle's manifest; for a run, the task keys its bundles' manifests will hold."""
        return self.task.manifest(self.run) if self.run else self.bundle.manifest

    def source_run(self) -> Run | None:
        """The run this artifact came from, when it is still on this machine."""
        if self.run:
            return self.run
        src = self.bundle.source_run
        return load_run(src) if src and is_run(src) else None


def open_artifact(
    path: str | Path, what: str = "artifact", runtime: str | None = None, precision: str | None = None
) -> Artifact:
    """A run or a bundle; for a bundle, `runtime` runs it through another runtime and
    `precision` picks its artifact (int8, fp32, bf16, ...)."""
    path = Path(path)
    if is_run(path):
        if precision:
            raise EdgetuneError(
                f"--precision {precision}: {what} {path} is a run (PyTorch, fp32); --precision picks an artifact of a "
                "bundle."
            )
        return Artifact(path, run=load_run(path))
    if (path / "manifest.json").is_file() or (path.is_file() and path.name.endswith((".tar.gz", ".tgz"))):
        bundle = load_bundle(path)
        bundle.artifact(precision)  # names the bundle and what it has when missing
        return Artifact(path, bundle=bundle, runtime=runtime, precision=precision)
    if not path.exists():
        raise EdgetuneError(
            f"{what} {path}: no such file or directory. Give a run directory (edgetune finetune/prune/quantize --out) "
            "or a bundle (edgetune build)."
        )
    raise EdgetuneError(
        f"{what} {path}: neither a run directory (no run.json) nor a bundle (no manifest.json, not a .tar.gz)."
    )


def float_ancestor(run: Run | None) -> Run | None:
    """Follow a run's parents back to its float fine-tune, if still present."""
    seen = set()
    while run is not None and run.stage != "float":
        parent = run.info.get("parent")
        if not parent or parent in seen or not is_run(parent):
            return None
        seen.add(parent)
        run = load_run(parent)
    return run


@dataclass
class Labelled:
    """Images and their targets, as labelled with `classes`."""

    pairs: list[tuple[str, object]]
    classes: list[str]
    name: str  # the dataset, for results rows

    @property
    def targets(self) -> list:
        return [y for _, y in self.pairs]

    @property
    def labels(self) -> np.ndarray:
        return np.array(self.targets)

    def for_artifact(self, artifact: Artifact, who: str) -> Labelled:
        """The same images with targets in the artifact's terms (its class order;
        an anomaly detector's normal / anomalous), as its task aligns them."""
        pairs = artifact.task.align(self.pairs, self.classes, artifact.manifest, who)
        return self if pairs is self.pairs else Labelled(pairs, list(artifact.classes), self.name)


def labelled_images(data: str | None, reference: Artifact | None, skip_bad: bool = False) -> Labelled | None:
    """`--data` (all its images, read as the reference's task reads data), else the
    test split of the reference's run; None when neither exists."""
    if data:
        from edgetune import tasks
        from edgetune.data.checks import drop_bad_images

        task = reference.task if reference else tasks.get(tasks.DEFAULT)
        source = drop_bad_images(task.source(data, {}), skip_bad, logger)
        return Labelled([(it.path, it.target) for it in source.items], source.classes, dataset_name(data))
    run = reference.source_run() if reference else None
    if run is None:
        return None
    return Labelled(list(run.split.parts["test"]), run.classes, dataset_name(run.split.source))


def dataset_name(spec: str) -> str:
    if spec.split(":")[0] == "elpv":
        return spec
    return Path(spec).stem or spec


def predict(artifact: Artifact, images: Labelled, threads: int | None = None, batch_size: int = 16) -> list:
    """The task's results of `artifact` on the images: a run through PyTorch with
    training's decoding and preprocessing, a bundle through its runtime session on
    OpenCV-decoded frames; both read by the same task session."""
    paths = [p for p, _ in images.pairs]
    if artifact.run:
        return torch_results(artifact.run, artifact.run.build_model(), paths)
    session = artifact.bundle.open(threads=threads, runtime=artifact.runtime, precision=artifact.precision)
    return session_results(session, paths, batch_size, artifact.label)


def torch_results(run, model, paths: list[str], batch_size: int = 32) -> list:
    """`model`'s results on image files the way training sees them: PIL decoding
    and the run's preprocessing (`EvalTransform`), read by the run's task."""
    import torch

    from edgetune.bench.torchbench import TorchSession
    from edgetune.data.transforms import EvalTransform, load_rgb

    task = run.task_impl
    # the module the export traces (the model and what its task's graph adds): the graph's outputs
    session = task.wrap(TorchSession(task.deploy_module(model), run.spec, outputs=task.session.outputs), run)
    transform, out = EvalTransform(run.spec), []
    with _progress(len(paths), f"{run.dir.name} (pytorch)") as advance:
        for i in range(0, len(paths), batch_size):
            images = [load_rgb(p) for p in paths[i : i + batch_size]]
            x = torch.stack([transform(im) for im in images]).numpy()
            out += session.predict(x, [tuple(im.shape[1:]) for im in images])
            advance(len(images))
    return out


def session_results(session, paths: list[str], batch_size: int = 16, desc: str = "") -> list:
    """A task session's results on image files, decoded by OpenCV: the device's path."""
    from edgetune.runtime.preprocess import BadImageError, read_image

    out = []
    with _progress(len(paths), desc) as advance:
        for i in range(0, len(paths), batch_size):
            chunk = paths[i : i + batch_size]
            try:
                frames = [read_image(p) for p in chunk]
            except BadImageError as e:
                raise EdgetuneError(f"{e}. Remove or fix the image.") from None
            out += session.predict_frames(frames)
            advance(len(chunk))
    return out


def _progress(total: int, desc: str):
    return log.progress(f"{desc}: predicting", total)
