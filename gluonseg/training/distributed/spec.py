"""Where a multi-host job runs: hosts, addresses, ports, timeouts, and the environment of the ps-lite roles.

The environment variables below are all optional. The defaults suit SageMaker; the local launcher
(`gluonseg train --hosts N`) overrides them.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from gluonseg.environment import ResourceConfig
from gluonseg.errors import AlgorithmError, ClientError

PS_PORT_ENV = "GLUONSEG_PS_ROOT_PORT"  # the scheduler's port on the first host
WATCHDOG_PORT_ENV = "GLUONSEG_WATCHDOG_PORT"  # the watchdog's port on the first host
PEER_TIMEOUT_ENV = "GLUONSEG_PEER_TIMEOUT"  # seconds a silent host is tolerated
JOIN_TIMEOUT_ENV = "GLUONSEG_JOIN_TIMEOUT"  # seconds to wait for every host to start
HOST_ADDRESSES_ENV = "GLUONSEG_HOST_ADDRESSES"  # "algo-1=10.0.0.1,algo-2=10.0.0.2": skips DNS
SUPERVISOR_PID_ENV = "GLUONSEG_SUPERVISOR_PID"  # set in role processes; marks the worker process
LAUNCHER_PID_ENV = "GLUONSEG_LAUNCHER_PID"  # set in the simulated hosts of `gluonseg train --hosts N`

DEFAULT_PS_PORT = 9000
DEFAULT_PEER_TIMEOUT = 60.0
DEFAULT_JOIN_TIMEOUT = 600.0
MAX_HOSTS = 256


def parse_host_addresses(text: str | None) -> dict[str, str]:
    """`algo-1=10.0.0.1,algo-2=10.0.0.2` -> {host: address}."""
    addresses: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        host, sep, address = item.partition("=")
        if not sep or not host.strip() or not address.strip():
            raise ClientError(f"{HOST_ADDRESSES_ENV}: '{item}' is not HOST=ADDRESS")
        addresses[host.strip()] = address.strip()
    return addresses


def _env_number(environ: dict[str, str], name: str, default: float, kind=float) -> Any:
    value = environ.get(name)
    if value in (None, ""):
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ClientError(f"{name} must be a number, got {value!r}") from None
    if number <= 0:
        raise ClientError(f"{name} must be positive, got {value!r}")
    return number


@dataclass(frozen=True)
class ClusterSpec:
    """Where everything runs: hosts, ports, network interface, timeouts."""

    hosts: tuple[str, ...]
    current_host: str
    interface: str | None = None
    ps_port: int = DEFAULT_PS_PORT
    watchdog_port: int = DEFAULT_PS_PORT + 1
    peer_timeout: float = DEFAULT_PEER_TIMEOUT
    join_timeout: float = DEFAULT_JOIN_TIMEOUT
    addresses: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_resources(cls, resources: ResourceConfig, environ: dict[str, str] | None = None) -> ClusterSpec:
        environ = dict(os.environ if environ is None else environ)
        if len(resources.hosts) > MAX_HOSTS:
            raise ClientError(
                f"at most {MAX_HOSTS} hosts are supported, resourceconfig.json lists {len(resources.hosts)}"
            )
        ps_port = _env_number(environ, PS_PORT_ENV, DEFAULT_PS_PORT, int)
        return cls(
            hosts=tuple(resources.hosts),
            current_host=resources.current_host,
            interface=resources.network_interface_name or None,
            ps_port=ps_port,
            watchdog_port=_env_number(environ, WATCHDOG_PORT_ENV, ps_port + 1, int),
            peer_timeout=_env_number(environ, PEER_TIMEOUT_ENV, DEFAULT_PEER_TIMEOUT),
            join_timeout=_env_number(environ, JOIN_TIMEOUT_ENV, DEFAULT_JOIN_TIMEOUT),
            addresses=parse_host_addresses(environ.get(HOST_ADDRESSES_ENV)),
        )

    @property
    def primary(self) -> str:
        return self.hosts[0]

    @property
    def is_primary(self) -> bool:
        return self.current_host == self.primary

    def address_of(self, host: str, deadline: float) -> str:
        """The IP address of `host`. SageMaker's host names can take a while to resolve, so retry."""
        if host in self.addresses:
            return self.addresses[host]
        while True:
            try:
                return socket.gethostbyname(host)
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise AlgorithmError(f"cannot resolve the address of host {host}: {exc}") from None
                time.sleep(1.0)

    def role_environment(self, role: str, root_address: str, base: dict[str, str]) -> dict[str, str]:
        """The environment of one ps-lite process (role: scheduler, server or worker)."""
        env = {k: v for k, v in base.items() if not k.startswith("DMLC_") and k != "PS_VERBOSE"}
        n = str(len(self.hosts))
        env.update(
            DMLC_ROLE=role,
            DMLC_PS_ROOT_URI=root_address,
            DMLC_PS_ROOT_PORT=str(self.ps_port),
            DMLC_NUM_SERVER=n,
            DMLC_NUM_WORKER=n,
        )
        if self.interface:
            env["DMLC_INTERFACE"] = self.interface
        elif self.current_host in self.addresses:
            env["DMLC_NODE_HOST"] = self.addresses[self.current_host]
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        return env


def is_worker_process() -> bool:
    """True in the worker that the supervisor started (not in the supervisor itself)."""
    return os.environ.get("DMLC_ROLE") == "worker" and bool(os.environ.get(SUPERVISOR_PID_ENV))
