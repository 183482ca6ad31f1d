"""The torch-free half of a task: a runtime session wrapped with what its
outputs mean.

A `TaskSession` keeps the model call of the session it wraps (`run`,
`run_outputs`, `run_frames`: the raw outputs, as the runtime gives them) and adds
the task's reading of them:

    predict(batch, sizes)    preprocessed batch -> one typed result per image
    predict_frames(frames)   uint8 BGR frames of any size -> typed results (end to end)

and, per result, what the camera line needs: its record, the values an `--alarm`
compares, whether it is flagged, and its overlay on the frame. Benchmarks move
results between processes as JSON (`to_json`/`from_json`). The PyTorch model of a
run goes through the same class (the run's records stand in for the manifest), so
the training side and the device side are read alike.

Subclasses set `task`, `outputs` and implement `decode`; the rest has defaults."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.runtime.preprocess import preprocess


class TaskSession:
    task = "?"
    outputs: tuple[str, ...] = ()  # the graph's output names, in order
    schema = 1  # the oldest manifest reader that runs this task right
    openvino_type: str | None = None  # the OpenVINO Model API type the IR may claim (its outputs must be that type's)
    alarm_help = "CLASS:THRESHOLD"  # what --alarm takes for this task
    section_key: str | None = None  # the manifest's task section (default: the task's name)

    def __init__(self, session, manifest: dict):
        self.session = session  # None: results are only read (from_json) or described
        self.classes = list(manifest["classes"])
        self.section = dict(manifest.get(self.section_key or self.task) or {})
        names = list(getattr(session, "output_names", None) or [])
        missing = [o for o in self.outputs if names and o not in names]
        if missing:
            raise EdgetuneError(
                f"The {session.name} model has no output {', '.join(missing)}; a {self.task} model outputs "
                f"{', '.join(self.outputs)}. Rebuild the bundle."
            )

    # --- the model call, as the wrapped session makes it -----------------------

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(batch)

    def run_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        return self.session.run_frames(frames)

    def run_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if not hasattr(self.session, "run_outputs"):  # a bare `Session` (run, run_frames): one output
            return {self.outputs[0]: self.session.run(batch)}
        return self.session.run_outputs(batch)

    def __getattr__(self, name: str):
        """Anything else (name, precision, spec, fixed_batch, ...) is the wrapped session's."""
        if name == "session":
            raise AttributeError(name)
        return getattr(self.session, name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.session.name} {self.session.precision}>"

    # --- typed results ---------------------------------------------------------

    def predict(self, batch: np.ndarray, sizes: Sequence[tuple[int, int]] | None = None) -> list:
        """A preprocessed float32 NCHW batch -> one result per image. `sizes`: each
        image's original (height, width), where results map back to the frame."""
        if batch.ndim == 3:
            batch = batch[None]
        sizes = list(sizes) if sizes is not None else [tuple(batch.shape[2:])] * len(batch)
        return self.decode(self.run_outputs(batch), sizes)

    def predict_frames(self, frames: Sequence[np.ndarray]) -> list:
        """End to end: uint8 HxWx3 BGR frames (OpenCV's order), any size -> results."""
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = [frames]
        sizes = [f.shape[:2] for f in frames]
        if not hasattr(
            self.session, "run_outputs"
        ):  # a bare `Session` (run, run_frames): one output, its own end to end
            return self.decode({self.outputs[0]: self.session.run_frames(frames)}, sizes)
        return self.predict(preprocess(frames, self.spec), sizes)

    def decode(self, outputs: dict[str, np.ndarray], sizes: list[tuple[int, int]]) -> list:
        raise NotImplementedError

    # --- what the camera line makes of a result -------------------------------

    def record(self, result, origin: tuple[int, int] = (0, 0)) -> dict:
        """The fields of a camera record: at least `class` and `score`. `origin`:
        where the image sits in the frame (an ROI's corner), for coordinates."""
        raise NotImplementedError

    def alarm_names(self) -> list[str]:
        """What an --alarm rule may name."""
        return list(self.classes)

    def alarm_values(self, result) -> dict[str, float]:
        """name -> the value an --alarm rule on that name compares with its threshold."""
        raise NotImplementedError

    def check_alarm(self, rule) -> None:
        """Refuse a rule this task cannot evaluate, naming what it can."""
        if rule.cls not in self.alarm_names():
            raise EdgetuneError(
                f"--alarm {rule}: the bundle has no class '{rule.cls}'. Its classes are: "
                f"{', '.join(self.alarm_names())}."
            )
        if rule.unit:
            raise EdgetuneError(
                f"--alarm {rule}: a {self.task} bundle compares scores in (0, 1]; give {self.alarm_help}."
            )

    def flagged(self, result) -> bool:
        """Whether the result marks the part as bad on its own (kept by --save-flagged)."""
        return False

    can_flag = False  # whether `flagged` can ever be true for this task

    def draw(self, image: np.ndarray, result) -> np.ndarray:
        """The task's overlay on the (ROI's) image; the label and score are drawn by the camera."""
        return image

    # --- results between processes ---------------------------------------------

    @classmethod
    def to_json(cls, result) -> Any:
        """What measuring a result needs, JSON-ready (a benchmark on a device sends it back)."""
        raise NotImplementedError

    @classmethod
    def from_json(cls, data: Any):
        raise NotImplementedError

    @classmethod
    def task_keys(cls, manifest: dict) -> dict:
        """The manifest's keys that say what the model's results mean: the task, its
        classes and its section."""
        key = cls.section_key or cls.task
        return {k: manifest[k] for k in ("task", "classes", key) if k in manifest}

    # --- what people read of a manifest -------------------------------------------

    @classmethod
    def headline(cls, metrics: dict) -> str:
        """A test-metrics dict in a few words (inspect, the build summary)."""
        return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)) or "-"

    @classmethod
    def describe(cls, manifest: dict) -> str | None:
        """inspect's line about the manifest's task section, if it has one."""
        return None

    @classmethod
    def build_note(cls, manifest: dict) -> str | None:
        """What the build's summary says of a bundle beyond its metrics, if anything."""
        return None
