"""What bench, compare and verify take as input: a run directory (its PyTorch
model) or a bundle (directory or .tar.gz, through its runtime session), and the
labelled images to measure them on."""

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
    def normal_class(self) -> str | None:
        """An anomaly model's normal class (None for a classifier)."""
        info = (self.run.info if self.run else self.bundle.manifest).get("anomaly")
        return info.get("normal_class") if info else None

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
                f"--precision {precision}: {what} {path} is a run (PyTorch, fp32); --precision picks an artifact of a bundle."
            )
        return Artifact(path, run=load_run(path))
    if (path / "manifest.json").is_file() or (path.is_file() and path.name.endswith((".tar.gz", ".tgz"))):
        bundle = load_bundle(path)
        bundle.artifact(precision)  # names the bundle and what it has when missing
        return Artifact(path, bundle=bundle, runtime=runtime, precision=precision)
    if not path.exists():
        raise EdgetuneError(
            f"{what} {path}: no such file or directory. Give a run directory (edgetune finetune/prune/quantize --out) or a bundle (edgetune build)."
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
    """Labelled images; labels index `classes`."""

    pairs: list[tuple[str, int]]
    classes: list[str]
    name: str  # the dataset, for results rows

    @property
    def labels(self) -> np.ndarray:
        return np.array([y for _, y in self.pairs], dtype=np.int64)

    def for_classes(self, classes: list[str], who: str, normal: str | None = None) -> "Labelled":
        """The same images with labels re-indexed to `classes` (a model's order);
        for an anomaly model (`normal` given), normal (0) / anomalous (1)."""
        if list(classes) == self.classes:
            return self
        if normal is not None:
            if normal not in self.classes:
                raise EdgetuneError(
                    f"{who} was fitted on normal class '{normal}', but the images are labelled {self.classes}. "
                    f"Give --data with a '{normal}' class (every other class counts as anomalous)."
                )
            n = self.classes.index(normal)
            return Labelled([(p, int(y != n)) for p, y in self.pairs], list(classes), self.name)
        if sorted(classes) != sorted(self.classes):
            raise EdgetuneError(
                f"{who} predicts classes {classes}, but the images are labelled {self.classes}. Give --data with the classes the model was trained on."
            )
        index = {c: i for i, c in enumerate(classes)}
        return Labelled([(p, index[self.classes[y]]) for p, y in self.pairs], list(classes), self.name)


def labelled_images(data: str | None, reference: Artifact | None, skip_bad: bool = False) -> Labelled | None:
    """`--data` (folder, CSV or elpv: all its images), else the test split of the
    reference's run; None when neither exists."""
    if data:
        from edgetune.data.checks import drop_bad_images
        from edgetune.data.sources import load_source

        source = drop_bad_images(load_source(data), skip_bad, logger)
        return Labelled([(it.path, it.label) for it in source.items], source.classes, dataset_name(data))
    run = reference.source_run() if reference else None
    if run is None:
        return None
    return Labelled(list(run.split.parts["test"]), run.classes, dataset_name(run.split.source))


def dataset_name(spec: str) -> str:
    if spec.split(":")[0] == "elpv":
        return spec
    return Path(spec).stem or spec


def predict(artifact: Artifact, images: Labelled, threads: int | None = None, batch_size: int = 16) -> np.ndarray:
    """Logits of `artifact` on the images: a run through PyTorch with training's
    preprocessing, a bundle through its runtime session on OpenCV-decoded frames."""
    if artifact.run:
        from edgetune.data.dataset import eval_loader
        from edgetune.data.transforms import EvalTransform
        from edgetune.train.loop import predict as torch_predict

        logits, _ = torch_predict(
            artifact.run.build_model(), eval_loader(images.pairs, EvalTransform(artifact.run.spec), batch_size=64)
        )
        return logits
    session = artifact.bundle.open(threads=threads, runtime=artifact.runtime, precision=artifact.precision)
    return session_logits(session, [p for p, _ in images.pairs], batch_size, artifact.label)


def session_logits(session, paths: list[str], batch_size: int = 16, desc: str = "") -> np.ndarray:
    from rich.progress import Progress

    from edgetune.runtime.preprocess import BadImageError, read_image

    out = []
    with Progress(console=log.console, transient=True, disable=log.quiet()) as progress:
        task = progress.add_task(f"{desc}: predicting", total=len(paths))
        for i in range(0, len(paths), batch_size):
            chunk = paths[i : i + batch_size]
            try:
                frames = [read_image(p) for p in chunk]
            except BadImageError as e:
                raise EdgetuneError(f"{e}. Remove or fix the image.") from None
            out.append(np.asarray(session.run_frames(frames), dtype=np.float32))
            progress.advance(task, len(chunk))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
