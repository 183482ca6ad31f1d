"""The README.md inside a bundle: what a person on the device reads first."""

from __future__ import annotations


def device_readme(m: dict, target) -> str:
    spec = m["preprocess"]
    main = m["artifacts"][m["precision"]]
    test = m["metrics"].get("test", {})
    return f"""# {m["name"]}: {m["model"]["backbone"]} for {m["target"]}

Built by edgetune {m["edgetune"]} on {m["created"]}. Classes (logit order): {", ".join(m["classes"])}.
Main artifact: `{main["file"]}` ({m["precision"]}, {m["runtime"]}); test accuracy {test.get("accuracy", float("nan")):.4f},
F1 {test.get("f1", float("nan")):.4f} on {test.get("n", "?")} images, measured through {m["metrics"].get("evaluated_with")}.

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
    logits = session.run_frames([read_image("cell.png")])
    print(bundle.classes[int(logits.argmax(1)[0])])

## Preprocessing (done by the runtime; listed for your own code)

Resize the whole frame to {spec["size"][0]}x{spec["size"][1]} ({spec["interpolation"]}, no crop; OpenCV's `cv2.resize`
on the {"uint8 frame" if spec.get("resize_dtype", "float32") == "uint8" else "frame converted to float32"}, as training did),
{spec["channel_order"]} channel order, float32, divide by 255, subtract mean {spec["mean"]}, divide by std {spec["std"]},
layout NCHW float32, input `{m["input"]["name"]}` shaped {m["input"]["shape"]}.

`manifest.json` records everything else: stages, configs, versions, hashes.
"""
