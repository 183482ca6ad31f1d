"""A deployable bundle: the model files, `manifest.json` and a device README, as a
directory or its `.tar.gz`. Loading verifies every file against the manifest.

The manifest is the contract between the build machine and the device
(keys in order):

    format         "edgetune-bundle"
    schema         the oldest reader that runs it right: 2 where the preprocessing
                   resizes the uint8 frame (a schema-1 reader ignores resize_dtype and
                   would resize in float), else 1; a task may ask for more (3: one a
                   schema-2 reader would take for a classifier)
    edgetune       edgetune version that built it
    created        ISO time of the build
    name           bundle name (e.g. "bundle-cpu")
    target         profile name, e.g. "cpu", "intel", "jetson-orin-nano"
    profile        the whole resolved device profile (runtime options, batch, ...)
    runtime        "onnxruntime" | "openvino" | "tensorrt"
    precision      precision of the main artifact: "int8" | "fp16" | "fp32"
    model          {"backbone", "stage" (qat|ptq|float ...), "pruned", "macs", "params"}
    classes        class names, as the task reads them (e.g. a logit column each)
    task           the task (`edgetune.runtime.tasks`); absent: that registry's
                   DEFAULT (bundles made before tasks were recorded)
    TASK           the task's own section, under its name where it has one
                   (thresholds, decoding, output sizes: see the task's module in
                   `edgetune.runtime.tasks`)
    input          {"name", "shape" [N, 3, H, W] (N null: any batch), "layout" "NCHW",
                    "dtype" "float32", "frames": what run_frames takes}
    preprocess     the PreprocessSpec (size, mean, std, interpolation, channel order,
                   resize_dtype)
    artifacts      precision -> {"file", "format" (onnx|openvino-ir), "precision",
                    "runtime", "files" [...], "preprocess_built_in", "options",
                    "size_bytes", "metrics" {"test": ..., "latency_ms_p50": ...,
                    "evaluated_with": runtime that produced the metrics},
                    "task_section": values of TASK this artifact chose for itself
                    on validation, overriding TASK's where present}
    metrics        test metrics of the main compiled artifact (through the runtime
                   session, not PyTorch), plus "pytorch_test" for reference
    stages         build history: [{"stage", "config", "inputs_hash", "metrics",
                    "seconds", "finished"}] from fine-tune to compile
    calibration    {"hash", "count", "recipe", ...} of the images quantization used
    versions       library versions used (torch, nncf, onnx, onnxruntime, openvino, ...)
    source_run     the run directory of the PyTorch model the bundle came from
    files          relative path -> {"sha256", "size"} for every file but manifest.json

Files added on the device later (a TensorRT engine under `engine/`) carry their own
record and are not in `files`.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgetune.errors import EdgetuneError
from edgetune.runtime.files import read_json, sha256_file
from edgetune.runtime.preprocess import PreprocessSpec
from edgetune.runtime.tasks import DEFAULT, entry, session_class, task_of

FORMAT = "edgetune-bundle"
SCHEMA = 3  # the newest this version reads (3: tasks whose results an older reader would misread)
MANIFEST = "manifest.json"
README = "README.md"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


def manifest_schema(spec: PreprocessSpec, task: str = DEFAULT) -> int:
    """The schema a bundle with this preprocessing and task needs its reader to know."""
    return max(2 if spec.resize_dtype == "uint8" else 1, session_class(task).schema)


@dataclass
class Bundle:
    root: Path
    manifest: dict
    verified: bool = field(default=False)

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.root.name)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def runtime(self) -> str:
        return self.manifest["runtime"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def precisions(self) -> list[str]:
        return list(self.manifest["artifacts"])

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics", {})

    @property
    def source_run(self) -> Path | None:
        src = self.manifest.get("source_run")
        return Path(src) if src else None

    def artifact(self, precision: str | None = None) -> dict:
        precision = precision or self.precision
        arts = self.manifest["artifacts"]
        if precision not in arts:
            raise EdgetuneError(f"Bundle {self.root} has no {precision} artifact; it has: {', '.join(arts)}.")
        return arts[precision]

    def artifact_path(self, precision: str | None = None) -> Path:
        """The main file of an artifact (for an OpenVINO IR the .xml; its .bin sits beside it)."""
        return self.root / self.artifact(precision)["file"]

    def artifact_size(self, precision: str | None = None) -> int:
        """Bytes on disk of all of an artifact's files."""
        art = self.artifact(precision)
        return sum((self.root / f).stat().st_size for f in art.get("files", [art["file"]]))

    def open(self, threads: int | None = None, precision: str | None = None, runtime: str | None = None):
        """A session running the artifact of `precision` (default: the main one),
        wrapped by the bundle's task: `run`/`run_frames` give the model's raw output,
        `predict`/`predict_frames` the task's typed results (`TaskSession`).

        `runtime` overrides the bundle's runtime where the file allows it, e.g.
        "onnxruntime" for a Jetson bundle's Q/DQ ONNX on a machine without TensorRT."""
        from edgetune.runtime.backends import open_session

        art = self.artifact(precision)
        runtime = runtime or art.get("runtime", self.runtime)
        if runtime == "onnxruntime" and art.get("format") != "onnx":
            raise EdgetuneError(
                f"Bundle {self.root}: the {art['precision']} artifact is {art.get('format')}, which ONNX Runtime "
                "cannot run."
            )
        session = open_session(runtime, self.root / art["file"], self.spec, art, threads=threads, root=self.root)
        return session_class(self.task)(session, artifact_manifest(self.manifest, art))

    @property
    def task(self) -> str:
        return task_of(self.manifest)

    def verify(self) -> None:
        verify_files(self.root, self.manifest)
        self.verified = True


def artifact_manifest(manifest: dict, artifact: dict) -> dict:
    """The manifest as one artifact reads it: the task section updated by the
    artifact's own `task_section`, where it has one (an anomaly artifact's
    threshold and normalisation, chosen on its own validation scores)."""
    own = artifact.get("task_section")
    if not own:
        return manifest
    key = session_class(task_of(manifest)).section_key or task_of(manifest)
    return {**manifest, key: {**(manifest.get(key) or {}), **own}}


def verify_files(root: Path, manifest: dict) -> None:
    """Every file the manifest lists must exist with its size and sha256."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise EdgetuneError(f"{root / MANIFEST}: lists no files with their sha256; not a valid bundle manifest.")
    for rel, want in files.items():
        path = _inside(root, rel)
        if not path.is_file():
            raise EdgetuneError(f"Bundle {root}: file {rel} is missing. Copy the whole bundle again (or its .tar.gz).")
        size = path.stat().st_size
        if "size" in want and size != want["size"]:
            what = "truncated" if size < want["size"] else "modified"
            raise EdgetuneError(
                f"Bundle {root}: file {rel} is {what} ({size} bytes, the manifest says {want['size']}). Copy the "
                "bundle again."
            )
        if sha256_file(path) != want["sha256"]:
            raise EdgetuneError(
                f"Bundle {root}: file {rel} was modified (sha256 differs from the manifest). Copy the bundle again; a "
                "tampered bundle is not run."
            )


def write_manifest(root: Path, manifest: dict) -> dict:
    """Record every file under `root` (size + sha256) and write manifest.json last."""
    from edgetune.runtime.files import write_json

    root = Path(root)
    manifest["files"] = {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if _packed(root, p) and p.name != MANIFEST
    }
    write_json(root / MANIFEST, manifest)
    return manifest


def _inside(root: Path, rel: str) -> Path:
    if os.path.isabs(rel) or ".." in Path(rel).parts:
        raise EdgetuneError(f"{root / MANIFEST}: file entry {rel!r} points outside the bundle.")
    return root / rel


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        raise EdgetuneError(
            f"{root}: not an edgetune bundle (no {MANIFEST}). Give a bundle directory or its .tar.gz from edgetune "
            "build."
        )
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as e:
        raise EdgetuneError(f"{path}: not readable JSON ({e}). Copy the bundle again.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EdgetuneError(f"{path}: not an edgetune bundle manifest (format is not {FORMAT!r}).")
    if manifest.get("schema", 0) > SCHEMA:
        raise EdgetuneError(
            f"{path}: manifest schema {manifest.get('schema')} is newer than this edgetune understands ({SCHEMA}). "
            "Upgrade edgetune on this device."
        )
    for key in ("classes", "preprocess", "target", "runtime", "precision", "artifacts", "files"):
        if key not in manifest:
            raise EdgetuneError(f"{path}: the manifest has no '{key}'; not a complete bundle.")
    try:
        entry(task_of(manifest))
    except EdgetuneError as e:
        raise EdgetuneError(f"{path}: {e}") from None
    try:
        PreprocessSpec.from_dict(manifest["preprocess"])
    except (KeyError, TypeError, ValueError) as e:
        raise EdgetuneError(
            f"{path}: the manifest's 'preprocess' is not valid ({e}). Rebuild the bundle, or restore its manifest.json."
        ) from None
    return manifest


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """A bundle directory or its .tar.gz (unpacked safely beside the archive);
    with `verify`, every file is checked against the manifest's sha256."""
    path = Path(path)
    if not path.exists():
        raise EdgetuneError(f"{path}: no such bundle. Give the bundle directory or its .tar.gz from edgetune build.")
    if path.is_file():
        if not path.name.endswith(ARCHIVE_SUFFIXES):
            raise EdgetuneError(f"{path}: a bundle is a directory or a .tar.gz archive, not this file.")
        path = unpack(path)
    bundle = Bundle(path, read_manifest(path))
    if verify:
        bundle.verify()
    return bundle


def archive_stem(archive: Path) -> str:
    name = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse anything that could write outside the destination or isn't plain data."""
    name = member.name
    if name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        raise EdgetuneError(f"{archive}: refused: member {name!r} has an absolute path.")
    if ".." in Path(name).parts or ".." in name.split("\\"):
        raise EdgetuneError(f"{archive}: refused: member {name!r} climbs out of the bundle with '..'.")
    if member.issym() or member.islnk():
        raise EdgetuneError(f"{archive}: refused: member {name!r} is a link; bundles hold plain files only.")
    if not (member.isfile() or member.isdir()):
        raise EdgetuneError(f"{archive}: refused: member {name!r} is not a plain file or directory.")


def unpack(archive: Path, dest: Path | None = None) -> Path:
    """Unpack `archive` to `dest` (default: beside it, named after it). An existing
    directory holding the same manifest is reused; otherwise it is replaced."""
    archive = Path(archive)
    dest = Path(dest) if dest else archive.parent / archive_stem(archive)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                check_member(m, archive)
            manifests = [m for m in members if Path(m.name).name == MANIFEST and len(Path(m.name).parts) <= 2]
            if len(manifests) != 1:
                raise EdgetuneError(f"{archive}: not an edgetune bundle archive (expected one {MANIFEST} at its top).")
            packed_manifest = tar.extractfile(manifests[0]).read()
            if (dest / MANIFEST).is_file() and (dest / MANIFEST).read_bytes() == packed_manifest:
                return dest
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
            try:
                for m in members:
                    tar.extract(
                        m, tmp, set_attrs=False, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {})
                    )
                top = tmp / Path(manifests[0].name).parent
                old = None
                if dest.exists():
                    old = dest.with_name(f".{dest.name}.old")
                    shutil.rmtree(old, ignore_errors=True)
                    dest.rename(old)
                top.rename(dest)
                if old:
                    shutil.rmtree(old, ignore_errors=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise EdgetuneError(f"{archive}: cannot be unpacked ({e}). Copy the archive again.") from None
    return dest


def pack(root: Path, archive: Path) -> Path:
    """Write `root` as `archive` (.tar.gz, one top directory, plain files only), atomically."""
    from edgetune.runtime.files import atomic_path

    root = Path(root)
    with atomic_path(archive) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            for path in sorted(root.rglob("*")):
                if not (_packed(root, path) or (path.is_dir() and not path.is_symlink())):
                    continue
                tar.add(
                    path, arcname=f"{root.name}/{path.relative_to(root).as_posix()}", recursive=False, filter=_clean
                )
    return Path(archive)


def _packed(root: Path, path: Path) -> bool:
    """Plain files belong to the bundle; links and hidden leftovers (temporary files) don't."""
    return (
        path.is_file()
        and not path.is_symlink()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


def _clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
