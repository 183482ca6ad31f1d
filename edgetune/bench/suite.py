"""`edgetune bench`: every artifact through the same runner and timing harness,
one row each, side by side with the PyTorch float baseline."""

from __future__ import annotations

import dataclasses
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from pathlib import Path

from edgetune import log
from edgetune.bench.artifacts import Artifact, Labelled, float_ancestor, labelled_images, open_artifact
from edgetune.bench.report import complete_rows, make_row, print_table, write_outputs
from edgetune.bench.runner import BUNDLE_RUNNER, TORCH_RUNNER, Relay, RunnerOptions, run_local
from edgetune.errors import EdgetuneError

logger = log.get(__name__)


@dataclasses.dataclass
class Job:
    artifact: Artifact
    precision: str | None  # which artifact of a bundle; None: its main one


def plan(artifacts: list[Artifact], precision: str | None) -> list[Job]:
    jobs = []
    for a in artifacts:
        if a.bundle and precision == "all":
            jobs += [Job(a, p) for p in a.bundle.precisions]
        elif a.bundle and precision:
            a.bundle.artifact(precision)  # names the bundle and what it has when missing
            jobs.append(Job(a, precision))
        else:
            jobs.append(Job(a, None))
    return jobs


def with_baseline(artifacts: list[Artifact]) -> list[Artifact]:
    """Put the float PyTorch model the bundles came from first, unless given."""
    if any(a.run and a.run.stage == "float" for a in artifacts):
        return artifacts
    for a in artifacts:
        base = float_ancestor(a.source_run())
        if base is not None:
            return [Artifact(base.dir, run=base), *artifacts]
    logger.warning(
        "No float run found for a PyTorch baseline row (the bundles' source runs are not on this machine); pass the "
        "float run directory too."
    )
    return artifacts


def _write_images(images: Labelled, folder: Path) -> tuple[Path, Path]:
    """The images as a list file (local runners) and an uncompressed tar (devices)."""
    listing = folder / "images.txt"
    listing.write_text("\n".join(p for p, _ in images.pairs) + "\n", encoding="utf-8")
    tar_path = folder / "images.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i, (p, _) in enumerate(images.pairs):
            tar.add(p, arcname=f"{i:06d}{Path(p).suffix.lower()}", recursive=False)
    return listing, tar_path


def run_bench(
    paths: list[Path],
    *,
    data: str | None,
    opts: RunnerOptions,
    precision: str | None,
    baseline: bool,
    devices: list[str],
    ssh=None,
    json_file: Path | None = None,
    md_file: Path | None = None,
    png_file: Path | None = None,
    skip_bad: bool = False,
    command: str = "edgetune bench",
) -> list[dict]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if not paths:
        raise EdgetuneError("Give at least one bundle or run directory to benchmark.")
    artifacts = [open_artifact(p, "BUNDLE_OR_RUN") for p in paths]
    if baseline:
        artifacts = with_baseline(artifacts)
    from edgetune.bench.devices import parse_device

    targets = [parse_device(d) for d in devices]
    if targets and not any(a.bundle for a in artifacts):
        raise EdgetuneError(
            "--device benchmarks bundles on the device; give a bundle (edgetune build), not only run directories."
        )
    reference = next((a for a in artifacts if a.source_run() is not None), None)
    images = labelled_images(data, reference, skip_bad)
    if images is None:
        logger.warning("No labelled images (no --data and no source run on this machine): latency only, no accuracy.")
    jobs = plan(artifacts, precision)
    local = [j for j in jobs if j.artifact.run or not targets]
    remote = [j for j in jobs if j.artifact.bundle and targets]

    results: list[tuple[Job, dict]] = []
    failures: list[str] = []
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with (
        tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp,
        Progress(*columns, console=log.console, disable=log.quiet()) as progress,
    ):
        listing, tar_path = _write_images(images, Path(tmp)) if images else (None, None)
        for job in local:  # one at a time: measurements never overlap on this machine
            module = TORCH_RUNNER if job.artifact.run else BUNDLE_RUNNER
            relay = Relay(
                progress, job.artifact.label if not job.precision else f"{job.artifact.bundle.name} ({job.precision})"
            )
            results.append(
                (
                    job,
                    run_local(
                        module,
                        str(job.artifact.path),
                        dataclasses.replace(opts, precision=job.precision),
                        str(listing) if listing else None,
                        relay,
                    ),
                )
            )
        if remote:
            results += _run_remote(remote, targets, ssh, opts, tar_path, Path(tmp), progress, failures)

    rows = _rows(results, images)
    what = images.name if images else "no labelled images"
    title = f"edgetune bench on {what}: threads {opts.threads or 'default'}, batch {','.join(map(str, opts.batches))}"
    print_table(rows, title)
    meta = {
        "command": command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "threads": opts.threads,
        "batches": opts.batches,
        "policy": opts.policy.to_dict(),
        "images": len(images.pairs) if images else 0,
        "failures": failures,
    }
    write_outputs(rows, title, json_file, md_file, png_file, meta)
    if failures:
        raise EdgetuneError("Some benchmarks failed (the rows above are the ones that ran):\n" + "\n".join(failures))
    return rows


def _run_remote(
    jobs: list[Job], targets, ssh, opts: RunnerOptions, tar_path: Path | None, tmp: Path, progress, failures: list[str]
) -> list[tuple[Job, dict]]:
    """Each device in its own thread (they are separate machines); bundles one
    after the other on a device."""
    from edgetune.bench.remote import bench_device
    from edgetune.runtime.bundle import pack

    packed = {}
    for j in jobs:
        a = j.artifact
        if a.path not in packed:
            packed[a.path] = a.path if a.path.is_file() else pack(a.bundle.root, tmp / f"{a.bundle.root.name}.tar.gz")
    cancel = threading.Event()
    lock = threading.Lock()

    def relay_for(label: str) -> Relay:
        with lock:
            return Relay(progress, label)

    results = []
    items = [(j.artifact.path, packed[j.artifact.path], dataclasses.replace(opts, precision=j.precision)) for j in jobs]
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        futures = {pool.submit(bench_device, dev, ssh, items, tar_path, relay_for, cancel): dev for dev in targets}
        try:
            for f in as_completed(futures):
                try:
                    results += list(zip(jobs, f.result()))
                except EdgetuneError as e:
                    failures.append(str(e))
        except KeyboardInterrupt:
            cancel.set()  # each worker stops its remote process and removes its directory
            wait(futures, timeout=60)
            raise
    return results


def _rows(results: list[tuple[Job, dict]], images: Labelled | None) -> list[dict]:
    rows = []
    reference = next(
        (r for j, r in results if r["artifact"]["runtime"] == "pytorch" and r["artifact"]["stage"] == "float"), None
    ) or next((r for j, r in results if r["artifact"]["stage"] == "float"), None)
    for job, r in results:
        targets = images.for_artifact(job.artifact, str(job.artifact.path)).targets if images else None
        comparable = (
            reference is not None
            and reference is not r
            and reference.get("predictions") is not None
            and (reference["artifact"].get("task"), reference["artifact"]["classes"])
            == (r["artifact"].get("task"), r["artifact"]["classes"])
        )
        row = make_row(r, images.name if images else None, targets, reference if comparable else None)
        if r.get("remote"):
            row["remote"] = r["remote"]["device"]
        rows.append(row)
    complete_rows(rows)
    return rows
