"""Benchmark bundles on a device over SSH (paramiko).

Per device: connect (host key checked against known_hosts), make a temporary
directory there, upload the torch-free runtime as one zip (`edgetune/__init__.py`,
`errors.py` and `runtime/`, imported from the zip; nothing is installed), the bundle
as a .tar.gz and the labelled images as one .tar, run
`python -m edgetune.runtime.devicebench` with the device's Python while streaming
its progress, fetch the JSON, and remove the directory, also after a failure or
Ctrl-C."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import shlex
import socket
import threading
import time
import zipfile
from pathlib import Path

import paramiko

from edgetune import log
from edgetune.bench.devices import Device, SSHOptions, parse_device  # noqa: F401 - this module's API too
from edgetune.bench.runner import BUNDLE_RUNNER, Relay, RunnerOptions
from edgetune.errors import EdgetuneError

logger = log.get(__name__)
RUNTIME_ZIP = "edgetune-runtime.zip"
TMP_PATTERN = re.compile(r"^/[A-Za-z0-9_./-]*/edgetune-bench\.[A-Za-z0-9]+$")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint, as `ssh-keygen -lf` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class UnknownHostKey(Exception):
    def __init__(self, key: paramiko.PKey):
        self.key = key


class WrongFingerprint(Exception):
    def __init__(self, key: paramiko.PKey):
        self.key = key


class _KeyPolicy(paramiko.MissingHostKeyPolicy):
    """A key known_hosts lacks: accepted (and recorded) when it has the fingerprint the
    user gave, or with `accept_unknown`; refused otherwise."""

    def __init__(self, accept_unknown: bool, expected: str | None):
        self.accept_unknown, self.expected = accept_unknown, expected
        self.accepted: paramiko.PKey | None = None

    def missing_host_key(self, client, hostname, key):
        if self.expected is not None and fingerprint(key) != self.expected:
            raise WrongFingerprint(key)
        if self.expected is None and not self.accept_unknown:
            raise UnknownHostKey(key)
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.accepted = key


def check_fingerprint(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", value):
        raise EdgetuneError(
            f"--host-key-fingerprint {value!r}: give it as OpenSSH prints it, SHA256: and 43 base64 characters "
            "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on the device)."
        )
    return value


def connect(device: Device, opts: SSHOptions) -> paramiko.SSHClient:
    """An authenticated client whose server key matches known_hosts, or, recorded
    there then, is unknown and accepted with `accept_host_key`, or has the
    `host_key_fingerprint` the user checked on the device. A CHANGED key is refused
    unless it has that fingerprint (OpenSSH's accept-new never takes a changed key)."""
    expected = check_fingerprint(opts.host_key_fingerprint)
    if opts.identity is not None and not Path(opts.identity).is_file():
        raise EdgetuneError(f"--identity {opts.identity}: no such key file.")
    client = paramiko.SSHClient()
    known = Path(opts.known_hosts).expanduser()
    if known.is_file():
        try:
            client.load_host_keys(str(known))
        except (OSError, paramiko.SSHException) as e:
            raise EdgetuneError(f"--known-hosts {known}: cannot be read ({e}).") from None
    policy = _KeyPolicy(opts.accept_host_key, expected)
    client.set_missing_host_key_policy(policy)
    kwargs = dict(
        hostname=device.host,
        port=device.port,
        username=device.user,
        timeout=opts.connect_timeout,
        banner_timeout=opts.connect_timeout,
        auth_timeout=opts.connect_timeout,
    )
    if opts.identity is not None:  # an explicit key only: no agent, no other keys tried
        kwargs.update(key_filename=str(opts.identity), look_for_keys=False, allow_agent=False)
    where = f"{device.url}"
    try:
        try:
            client.connect(**kwargs)
        except paramiko.BadHostKeyException as e:
            if expected is None or fingerprint(e.key) != expected:
                client.close()
                given = (
                    f" It is not the fingerprint given with --host-key-fingerprint ({expected})."
                    if expected
                    else " --accept-host-key accepts unknown keys only, never a changed one."
                    if opts.accept_host_key
                    else ""
                )
                raise EdgetuneError(
                    f"{where}: the host key CHANGED. known_hosts ({known}) has {fingerprint(e.expected_key)}, the "
                    f"server offers {fingerprint(e.key)}. This can be a reinstalled device or someone intercepting "
                    f"the connection; the connection was refused.{given} If the device was reinstalled, check the new "
                    "fingerprint on it (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then run: ssh-keygen -R "
                    f"'{device.known_hosts_name}' -f {known}, or pass --host-key-fingerprint {fingerprint(e.key)}."
                ) from None
            logger.warning(
                "%s: replacing the changed host key %s with %s (--host-key-fingerprint).",
                where,
                fingerprint(e.expected_key),
                fingerprint(e.key),
            )
            del client.get_host_keys()[device.known_hosts_name]
            client.connect(**kwargs)
    except UnknownHostKey as e:
        client.close()
        raise EdgetuneError(
            f"{where}: the host key is unknown (not in {known}); the server offers {e.key.get_name()} "
            f"{fingerprint(e.key)}. Check that fingerprint on the device (ssh-keygen -lf "
            f"/etc/ssh/ssh_host_*_key.pub), then add it (ssh-keyscan -p {device.port} {device.host} >> {known}), or "
            "pass --host-key-fingerprint with it, or --accept-host-key."
        ) from None
    except WrongFingerprint as e:
        client.close()
        raise EdgetuneError(
            f"{where}: the server offers host key {e.key.get_name()} {fingerprint(e.key)}, not the {expected} given "
            "with --host-key-fingerprint; the connection was refused. Check the fingerprint on the device "
            "(ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub)."
        ) from None
    except paramiko.AuthenticationException:
        client.close()
        key = f"the key {opts.identity}" if opts.identity else "your SSH keys and agent"
        raise EdgetuneError(
            f"{where}: authentication as {device.user} failed with {key}. Put the public key in "
            f"~{device.user}/.ssh/authorized_keys on the device (ssh-copy-id), or pass --identity KEY."
        ) from None
    except paramiko.ssh_exception.NoValidConnectionsError as e:
        client.close()
        raise EdgetuneError(
            f"{where}: cannot connect to {device.host}:{device.port} ({e.strerror or e}). Is the device on the "
            "network, sshd running and the port right?"
        ) from None
    except socket.gaierror as e:
        client.close()
        raise EdgetuneError(f"{where}: unknown host name {device.host!r} ({e.strerror}).") from None
    except (socket.timeout, TimeoutError):
        client.close()
        raise EdgetuneError(
            f"{where}: timed out after {opts.connect_timeout:g} s connecting to {device.host}:{device.port}. "
            f"Check the address and any firewall in between."
        ) from None
    except (paramiko.SSHException, OSError) as e:
        client.close()
        raise EdgetuneError(f"{where}: SSH connection failed: {e}.") from None
    if policy.accepted is not None:
        from edgetune.runtime.files import atomic_path

        with atomic_path(known) as tmp:
            client.get_host_keys().save(str(tmp))
        logger.warning("%s: accepted host key %s and recorded it in %s.", where, fingerprint(policy.accepted), known)
    return client


def runtime_zip() -> bytes:
    """The torch-free part of edgetune, importable from a zip on PYTHONPATH."""
    import edgetune

    root = Path(edgetune.__file__).parent
    files = [root / "__init__.py", root / "errors.py", *sorted((root / "runtime").rglob("*.py"))]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, f"edgetune/{f.relative_to(root).as_posix()}")
    return buf.getvalue()


class Cancelled(Exception):
    """Ctrl-C in the main thread: stop and clean up."""


class RemoteHost:
    """One SSH connection and its temporary directory; `close()` removes it."""

    def __init__(self, device: Device, opts: SSHOptions, cancel: threading.Event | None = None):
        self.device, self.opts = device, opts
        self.cancel = cancel or threading.Event()
        self.client = connect(device, opts)
        self.tmp: str | None = None
        try:
            self.sftp = self.client.open_sftp()
            rc, out = self.exec('mktemp -d "${TMPDIR:-/tmp}/edgetune-bench.XXXXXXXX"')
            path = out.strip()
            if rc != 0 or not TMP_PATTERN.match(path):
                raise EdgetuneError(
                    f"{device.url}: cannot make a temporary directory (mktemp said: {out.strip()[:200]})."
                )
            self.tmp = path
        except BaseException:
            self.close()
            raise

    def exec(self, command: str, relay: Relay | None = None, timeout: float | None = None) -> tuple[int, str]:
        """Run `command` on a pty (closing it hangs the remote process up); feed
        each output line to `relay`. Returns (exit status, output)."""
        chan = self.client.get_transport().open_session()
        chan.get_pty(width=200)
        chan.settimeout(0.25)
        chan.exec_command(command)
        timeout = timeout or self.opts.idle_timeout
        out, pending, last = [], b"", time.monotonic()
        try:
            while True:
                if self.cancel.is_set():
                    raise Cancelled()
                try:
                    data = chan.recv(65536)
                except socket.timeout:
                    if time.monotonic() - last > timeout:
                        raise EdgetuneError(
                            f"{self.device.url}: no output for {timeout:g} s from: {command[:120]}. The device may be "
                            "stuck; rerun with a longer --remote-timeout if it is just slow."
                        ) from None
                    continue
                if not data:
                    break
                last = time.monotonic()
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    text = line.decode("utf-8", "replace").rstrip("\r")
                    out.append(text)
                    if relay:
                        relay.feed(text)
            if pending:
                out.append(pending.decode("utf-8", "replace"))
                if relay:
                    relay.feed(out[-1])
            return chan.recv_exit_status(), "\n".join(out)
        finally:
            chan.close()

    def put(self, data: bytes | Path, name: str) -> str:
        path = f"{self.tmp}/{name}"
        if isinstance(data, Path):
            self.sftp.put(str(data), path)
        else:
            self.sftp.putfo(io.BytesIO(data), path)
        return path

    def get_json(self, path: str) -> dict:
        import json

        with self.sftp.open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))

    def close(self) -> None:
        """Remove the temporary directory (best effort, whatever happened) and disconnect."""
        try:
            if self.tmp and TMP_PATTERN.match(self.tmp):
                saved, self.cancel = self.cancel, threading.Event()  # cleanup must run even when cancelled
                try:
                    self.exec(f"rm -rf -- {shlex.quote(self.tmp)}", timeout=30)
                finally:
                    self.cancel = saved
                self.tmp = None
        except (EdgetuneError, paramiko.SSHException, OSError) as e:
            logger.warning("%s: could not remove %s (%s); remove it by hand.", self.device.url, self.tmp, e)
        finally:
            self.client.close()


def bench_device(
    device: Device,
    ssh: SSHOptions,
    items: list[tuple[Path, Path, RunnerOptions]],
    images_tar: Path | None,
    relay_for,
    cancel: threading.Event,
) -> list[dict]:
    """Benchmark each (bundle as given, its .tar.gz, runner options) on `device`,
    one after the other; one result each. `relay_for(label)` gives a progress relay."""
    host = RemoteHost(device, ssh, cancel)
    try:
        zip_path = host.put(runtime_zip(), RUNTIME_ZIP)
        images = host.put(images_tar, "images.tar") if images_tar else None
        py = shlex.quote(ssh.remote_python)
        uploaded: dict[Path, str] = {}
        results = []
        for i, (original, packed, opts) in enumerate(items):
            relay = relay_for(f"{device.host}: {original.name}" + (f" ({opts.precision})" if opts.precision else ""))
            if packed not in uploaded:
                uploaded[packed] = host.put(packed, f"bundle{len(uploaded)}.tar.gz")
            out = f"{host.tmp}/result{i}.json"
            args = " ".join(shlex.quote(a) for a in [uploaded[packed], "--out", out, *opts.args(images)])
            # PYTHONPATH holds only the uploaded zip: the device runs exactly this code.
            env = f"PYTHONPATH={shlex.quote(zip_path)} PYTHONDONTWRITEBYTECODE=1"
            cmd = f"cd {shlex.quote(host.tmp)} && {env} exec {py} -m {BUNDLE_RUNNER} {args}"
            rc, _ = host.exec(cmd, relay)
            if rc != 0:
                raise EdgetuneError(_failure(device, ssh, relay, rc, original))
            result = host.get_json(out)
            result["artifact"]["path"] = str(original)
            result["remote"] = {"device": device.url, "python": ssh.remote_python}
            relay.done()
            results.append(result)
        return results
    finally:
        host.close()


def _failure(device: Device, ssh: SSHOptions, relay: Relay, rc: int, bundle: Path) -> str:
    where = f"{device.url}, bundle {bundle}"
    if rc == 127 and not relay.error:
        return (
            f"{where}: no Python at {ssh.remote_python!r} on the device. Install python3 there (with numpy and "
            "opencv-python-headless) or pass --remote-python PATH."
        )
    if relay.error and relay.error.get("kind") == "missing":
        missing = relay.error.get("message")
        return (
            f"{where}: the device's Python ({ssh.remote_python}) lacks a package: {missing} Install it on the device."
        )
    return relay.failure(where, rc)
