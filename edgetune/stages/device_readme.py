"""The README.md inside a bundle: what a person on the device reads first."""

from __future__ import annotations

from edgetune.runtime.tasks import session_class, task_of


def device_readme(m: dict, target) -> str:
    spec = m["preprocess"]
    main = m["artifacts"][m["precision"]]
    test = m["metrics"].get("test", {})
    task = session_class(task_of(m))
    resize = "uint8 frame" if spec.get("resize_dtype", "float32") == "uint8" else "frame converted to float32"
    return f"""# {m["name"]}: {m["model"]["backbone"]} for {m["target"]}

Built by edgetune {m["edgetune"]} on {m["created"]}: task {task.task}, classes {", ".join(m["classes"])}.
Main artifact: `{main["file"]}` ({m["precision"]}, {m["runtime"]}); test {task.headline(test)}
on {test.get("n", "?")} images, measured through {m["metrics"].get("evaluated_with")}.

## Install (no torch needed)

{target.readme(m)}
## Run

    edgetune inspect {m["name"]}                 # checks every file's sha256, shows this bundle
    edgetune infer {m["name"]} --source 0        # camera 0

or from Python:

    from edgetune.runtime.bundle import load_bundle
    from edgetune.runtime.preprocess import read_image
    bundle = load_bundle("{m["name"]}")          # or the .tar.gz; refuses modified files
    session = bundle.open()
    result = session.predict_frames([read_image("part.png")])[0]  # the task's typed result
    print(session.record(result))                # what infer records of it: class, score, ...

## Preprocessing (done by the runtime; listed for your own code)

Resize the whole frame to {spec["size"][0]}x{spec["size"][1]} ({spec["interpolation"]}, no crop; OpenCV's
`cv2.resize` on the {resize}, as training did), {spec["channel_order"]} channel order, float32, divide by 255,
subtract mean {spec["mean"]}, divide by std {spec["std"]}, layout NCHW float32, input `{m["input"]["name"]}`
shaped {m["input"]["shape"]}; outputs {", ".join(task.outputs)}.

`manifest.json` records everything else: stages, configs, versions, hashes.
"""
