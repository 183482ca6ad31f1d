"""On-device benchmarking over SSH, against a real OpenSSH server on 127.0.0.1
with its own temporary host key and user key."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import run_cli

from edgetune.bench import remote
from edgetune.bench.runner import Relay, RunnerOptions
from edgetune.errors import EdgetuneError
from edgetune.runtime.timing import Policy

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(
    not Path(SSHD).exists(), reason="no OpenSSH server binary (sshd); install openssh-server (.ci/run does)"
)

# Runs before any import on the "device": torch and friends cannot be imported, and
# edgetune is reachable only through what the benchmark uploaded (not this checkout).
GUARD = """
import sys
BLOCKED = {blocked!r}
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not installed on this device", name=name)
sys.meta_path[:] = [_Block()] + [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if p.rstrip("/") != {repo!r}]
"""


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path):
        self.root = root
        self.user = os.environ.get("USER") or __import__("getpass").getuser()
        self.host_key = _keygen(root / "host_key")
        self.other_host_key = _keygen(root / "other_host_key")
        self.user_key = _keygen(root / "user_key")
        self.wrong_key = _keygen(root / "wrong_key")
        (root / "authorized_keys").write_text((root / "user_key.pub").read_text())
        self.port = _free_port()

    def known_hosts(self, path: Path, key: Path | None = None) -> Path:
        pub = (key or self.host_key).with_suffix(".pub").read_text().split()
        path.write_text(f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n")
        return path

    def python(self, blocked: set[str]) -> Path:
        """A device Python: this venv's interpreter behind the guard above."""
        guard = self.root / ("guard-" + "-".join(sorted(blocked)))
        guard.mkdir(exist_ok=True)
        (guard / "sitecustomize.py").write_text(
            GUARD.format(blocked=sorted(blocked), repo=str(Path(__file__).resolve().parents[1]))
        )
        wrapper = guard / "python"
        wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="$PYTHONPATH:{guard}" exec {sys.executable} "$@"\n')
        wrapper.chmod(0o755)
        return wrapper

    def device(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("sshd"))
    config = srv.root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {srv.port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {srv.host_key}",
                f"AuthorizedKeysFile {srv.root / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                f"PermitRootLogin {'yes' if os.geteuid() == 0 else 'no'}",
                f"PidFile {srv.root / 'sshd.pid'}",
                "Subsystem sftp internal-sftp",
                "LogLevel ERROR",
            ]
        )
        + "\n"
    )
    if os.geteuid() == 0:  # sshd started as root insists on its privilege-separation directory
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = open(srv.root / "sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"sshd did not start: {(srv.root / 'sshd.log').read_text()}")
            time.sleep(0.1)
    yield srv
    proc.terminate()
    proc.wait(10)
    log.close()


def _options(srv: Server, tmp_path: Path, **kw) -> remote.SSHOptions:
    if "known_hosts" not in kw:
        kw["known_hosts"] = srv.known_hosts(tmp_path / "known_hosts")
    kw.setdefault("identity", srv.user_key)
    return remote.SSHOptions(connect_timeout=10, **kw)


def _leftovers() -> set[str]:
    return {str(p) for p in Path("/tmp").glob("edgetune-bench.*")}


def test_remote_bench_over_loopback_uses_only_the_uploaded_runtime(sshd, fp32_bundle, tmp_path):
    known = sshd.known_hosts(tmp_path / "known_hosts")
    py = sshd.python({"torch", "timm", "nncf", "torchvision"})
    before = _leftovers()
    out = tmp_path / "remote.json"
    proc = run_cli(
        "bench",
        fp32_bundle,
        "--no-baseline",
        "--device",
        sshd.device(),
        "--identity",
        sshd.user_key,
        "--known-hosts",
        known,
        "--remote-python",
        py,
        "--warmup",
        "1",
        "--min-time",
        "0.1",
        "--min-runs",
        "5",
        "--batch",
        "1,2",
        "--json",
        out,
    )
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1, proc.stderr
    row = rows[0]
    assert row["remote"] == sshd.device() and row["runtime"] == "onnxruntime" and row["precision"] == "fp32"
    # the fixture run's test split, judged on the device: the same accuracy as PyTorch's on this machine
    run_info = json.loads(
        (Path(json.loads((fp32_bundle / "manifest.json").read_text())["source_run"]) / "run.json").read_text()
    )
    assert row["n_images"] > 0 and row["accuracy"] == pytest.approx(
        run_info["history"][-1]["metrics"]["test"]["accuracy"]
    )
    assert row["latency_ms_p50"] > 0 and set(row["throughput_by_batch"]) == {"1", "2"} and row["latency_runs"] >= 5
    dev = row["device"]
    assert dev["cores"] >= 1 and dev["memory_gb"] > 0 and dev["os"] and dev["cpu"]
    # The device imported edgetune from the uploaded zip, and never torch.
    py_info = row["python"]
    assert "edgetune-runtime.zip" in py_info["edgetune_from"] and "/edgetune-bench." in py_info["edgetune_from"]
    assert py_info["heavy_modules_loaded"] == [] and "onnxruntime" in py_info["versions"]
    assert _leftovers() == before  # the remote directory is gone


def _fingerprint(pub: Path) -> str:
    """OpenSSH's SHA256 fingerprint of a .pub file, as ssh-keygen -lf prints it."""
    import base64
    import hashlib

    blob = base64.b64decode(pub.read_text().split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def test_changed_host_key_is_refused_even_with_accept_host_key(sshd, tmp_path):
    """Like OpenSSH's accept-new: --accept-host-key never takes a CHANGED key; only
    the new key's fingerprint, checked on the device, does."""
    known = sshd.known_hosts(tmp_path / "known_hosts", key=sshd.other_host_key)
    old = known.read_text()
    device = remote.parse_device(sshd.device())
    new_fp = _fingerprint(sshd.host_key.with_suffix(".pub"))
    with pytest.raises(EdgetuneError, match="host key CHANGED") as e:
        remote.connect(device, _options(sshd, tmp_path, known_hosts=known))
    assert (
        new_fp in str(e.value)
        and "ssh-keygen -R" in str(e.value)
        and f"--host-key-fingerprint {new_fp}" in str(e.value)
    )
    with pytest.raises(EdgetuneError, match="host key CHANGED.*accepts unknown keys only"):
        remote.connect(device, _options(sshd, tmp_path, known_hosts=known, accept_host_key=True))
    wrong_fp = _fingerprint(sshd.other_host_key.with_suffix(".pub"))
    with pytest.raises(EdgetuneError, match="not the fingerprint given"):
        remote.connect(device, _options(sshd, tmp_path, known_hosts=known, host_key_fingerprint=wrong_fp))
    assert known.read_text() == old  # nothing recorded while refused
    remote.connect(device, _options(sshd, tmp_path, known_hosts=known, host_key_fingerprint=new_fp)).close()
    assert (
        (sshd.host_key.with_suffix(".pub").read_text().split()[1]) in known.read_text()
    )  # the new key replaced the old
    assert sshd.other_host_key.with_suffix(".pub").read_text().split()[1] not in known.read_text()
    remote.connect(device, _options(sshd, tmp_path, known_hosts=known)).close()  # now trusted
    with pytest.raises(EdgetuneError, match="SHA256: and 43 base64"):
        remote.connect(device, _options(sshd, tmp_path, known_hosts=known, host_key_fingerprint="MD5:ab:cd"))


def test_unknown_host_key_is_refused_unless_accepted(sshd, tmp_path):
    known = tmp_path / "empty_known_hosts"
    device = remote.parse_device(sshd.device())
    with pytest.raises(EdgetuneError, match="host key is unknown"):
        remote.connect(device, _options(sshd, tmp_path, known_hosts=known))
    with pytest.raises(EdgetuneError, match="not the SHA256:.* given with --host-key-fingerprint"):
        remote.connect(
            device,
            _options(
                sshd,
                tmp_path,
                known_hosts=known,
                host_key_fingerprint=_fingerprint(sshd.other_host_key.with_suffix(".pub")),
            ),
        )
    assert not known.exists()
    remote.connect(device, _options(sshd, tmp_path, known_hosts=known, accept_host_key=True)).close()  # accept-new
    assert sshd.host_key.with_suffix(".pub").read_text().split()[1] in known.read_text()
    remote.connect(device, _options(sshd, tmp_path, known_hosts=known)).close()


def test_wrong_user_key_is_refused(sshd, tmp_path):
    with pytest.raises(EdgetuneError, match="authentication as .* failed"):
        remote.connect(remote.parse_device(sshd.device()), _options(sshd, tmp_path, identity=sshd.wrong_key))


def test_connection_errors_are_clear(sshd, tmp_path):
    closed = _free_port()
    with pytest.raises(EdgetuneError, match="cannot connect to 127.0.0.1"):
        remote.connect(remote.Device(sshd.user, "127.0.0.1", closed), _options(sshd, tmp_path))
    with pytest.raises(EdgetuneError, match=r"ssh://user@host\[:port\]"):
        remote.parse_device("scp://127.0.0.1")


def test_missing_runtime_on_device_says_what_to_install(sshd, fp32_bundle, tmp_path):
    py = sshd.python({"torch", "onnxruntime"})
    before = _leftovers()
    ssh = _options(sshd, tmp_path, remote_python=str(py))
    opts = RunnerOptions(None, [1], Policy(0, 0.0, 1))
    with pytest.raises(EdgetuneError, match=r"onnxruntime runtime is not installed.*pip install"):
        remote.bench_device(
            remote.parse_device(sshd.device()),
            ssh,
            [(fp32_bundle, _packed(fp32_bundle, tmp_path), opts)],
            None,
            lambda label: Relay(None, label),
            threading.Event(),
        )
    assert _leftovers() == before


def test_interrupt_stops_the_remote_process_and_removes_its_directory(sshd, fp32_bundle, tmp_path):
    cancel = threading.Event()

    class CancelOnProgress(Relay):
        def feed(self, line):
            super().feed(line)
            if "latency b1" in line:
                cancel.set()  # what Ctrl-C does in `edgetune bench`

    before = _leftovers()
    ssh = _options(sshd, tmp_path, remote_python=str(sshd.python({"torch"})))
    opts = RunnerOptions(None, [1], Policy(0, 60.0, 1))  # would run a minute
    t0 = time.time()
    with pytest.raises(remote.Cancelled):
        remote.bench_device(
            remote.parse_device(sshd.device()),
            ssh,
            [(fp32_bundle, _packed(fp32_bundle, tmp_path), opts)],
            None,
            lambda label: CancelOnProgress(None, label),
            cancel,
        )
    assert time.time() - t0 < 30
    assert _leftovers() == before
    deadline = time.time() + 10
    while _runner_processes() and time.time() < deadline:
        time.sleep(0.2)
    assert not _runner_processes()


def _packed(bundle: Path, tmp_path: Path) -> Path:
    from edgetune.runtime.bundle import pack

    return pack(bundle, tmp_path / "bundle.tar.gz")


def _runner_processes() -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "edgetune.runtime.devicebench" in text and "/edgetune-bench." in text:
            found.append(text)
    return found


def test_remote_bench_of_an_anomaly_bundle_reports_what_this_machine_does(sshd, anomaly_build, tmp_path):
    """An anomaly bundle on the device: image AUROC, F1 at the threshold and the
    false-alarm rate on its run's test split, equal to the same bench here."""
    known = sshd.known_hosts(tmp_path / "known_hosts")
    py = sshd.python({"torch", "timm", "nncf", "torchvision"})
    bundle = anomaly_build / "bundle-cpu"
    common = ["--no-baseline", "--warmup", "1", "--min-time", "0.1", "--min-runs", "5"]
    run_cli("bench", bundle, *common, "--json", tmp_path / "here.json")
    proc = run_cli(
        "bench",
        bundle,
        *common,
        "--device",
        sshd.device(),
        "--identity",
        sshd.user_key,
        "--known-hosts",
        known,
        "--remote-python",
        py,
        "--json",
        tmp_path / "remote.json",
    )
    here, there = (json.loads((tmp_path / f"{name}.json").read_text())["rows"] for name in ("here", "remote"))
    assert len(there) == len(here) >= 1, proc.stderr
    for h, r in zip(here, there):
        assert r["remote"] == sshd.device() and r["task"] == h["task"] == "anomaly" and r["precision"] == h["precision"]
        assert r["n_images"] == h["n_images"] > 0
        for key in ("auroc", "f1", "false_alarm_rate"):
            assert r[key] == pytest.approx(h[key], abs=1e-6), key
        assert r["auroc"] >= 0.9  # the textures' defects, found on the device too
