"""Where `bench --device` runs: the device's SSH address and how to connect to it.
Light (no paramiko): `edgetune bench` of a local bundle runs on a device install,
which has no SSH libraries; edgetune.bench.remote does the connecting."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from edgetune.errors import EdgetuneError


@dataclass(frozen=True)
class Device:
    user: str
    host: str
    port: int = 22

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@{self.host}" + (f":{self.port}" if self.port != 22 else "")

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this server (OpenSSH's convention)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def parse_device(url: str) -> Device:
    try:
        u = urlsplit(url)
        port = u.port or 22
    except ValueError as e:
        raise EdgetuneError(f"--device {url}: {e}. Write it as ssh://user@host[:port].") from None
    if u.scheme != "ssh" or not u.hostname or not u.username or u.path not in ("", "/"):
        raise EdgetuneError(
            f"--device {url}: write it as ssh://user@host[:port], e.g. ssh://nvidia@192.168.1.20 or "
            "ssh://pi@line3-cam:2222."
        )
    return Device(u.username, u.hostname, port)


@dataclass
class SSHOptions:
    identity: Path | None = None
    known_hosts: Path = field(default_factory=lambda: Path.home() / ".ssh" / "known_hosts")
    accept_host_key: bool = False  # an UNKNOWN host key only, like OpenSSH's accept-new; never a changed one
    host_key_fingerprint: str | None = (
        None  # "SHA256:...": accept the server's key, unknown or changed, when it has this fingerprint
    )
    remote_python: str = "python3"
    connect_timeout: float = 15.0
    idle_timeout: float = (
        1800.0  # no output for this long: the device is stuck (a TensorRT build is silent for minutes)
    )
