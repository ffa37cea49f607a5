"""pytest fixtures for lightningd-py and its plugins (registered through the ``pytest11``
entry point, so installing lightningd-py makes them available everywhere).

Everything runs as real processes: ``simnet`` is a simulated LND speaking LND's gRPC API
over TLS with macaroons, and ``ldp_daemon`` is ``lightningd-py run`` with a NOTIFY_SOCKET
the fixture listens on, exactly as under systemd. A plugin's tests therefore look like::

    def test_my_plugin(ldp_daemon_factory, ldp_config_factory):
        config = ldp_config_factory(plugins={"my_plugin": {"threshold": 3}})
        daemon = ldp_daemon_factory(config)
        daemon.simnet.control...   # make LND do something
        daemon.wait_for(lambda: ...)

Fixtures: ``simnet``, ``ldp_config_factory``, ``ldp_daemon_factory``, ``ldp_daemon``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .cli import hash_tokens, new_tokens
from .demo import DaemonProcess, SimnetProcess, daemon_config, free_port, write_config

__all__ = [
    "LdpConfig",
    "ldp_config_factory",
    "ldp_daemon",
    "ldp_daemon_factory",
    "simnet",
]


@dataclass(frozen=True)
class LdpConfig:
    """A config file written by ``ldp_config_factory``.

    :ivar tokens: the plaintext API token of each role (the file holds their SHA-256).
    :ivar data: the tables written to the file.
    """

    path: Path
    state_dir: Path
    api_url: str
    metrics_url: str
    tokens: dict[str, str]
    data: dict[str, Any] = field(repr=False)


class LdpDaemon(DaemonProcess):
    """A running ``lightningd-py run`` (see ``DaemonProcess``), with its config and the
    simnet it talks to."""

    def __init__(
        self,
        config: LdpConfig,
        simnet: SimnetProcess,
        *,
        env: Mapping[str, str] | None = None,
        launcher: Sequence[str] | None = None,
    ):
        super().__init__(
            config.path,
            log_path=config.state_dir.parent / "daemon.log",
            env=env,
            api_url=config.api_url,
            metrics_url=config.metrics_url,
            tokens=config.tokens,
            state_dir=config.state_dir,
            launcher=launcher,
        )
        self.config = config
        self.simnet = simnet


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "simnet_args(*args): extra command-line arguments for the simnet fixture "
        '(e.g. "--locked", "--channels", "3")',
    )


@pytest.fixture
def simnet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimnetProcess]:
    """A running simnet node in a fresh directory; stopped after the test.

    Attributes: ``grpc`` (host:port), ``control`` (a ``SimnetControl`` client),
    ``tls_cert``, ``admin_macaroon``, ``invoice_macaroon``, ``readonly_macaroon``,
    ``lnddir``, ``info`` (simnet's ready line); ``restart()`` (an LND-like restart,
    same state), ``restart_process()``, ``stop()``. Mark a test
    ``@pytest.mark.simnet_args("--locked")`` to pass simnet arguments.
    """
    marker = request.node.get_closest_marker("simnet_args")
    node = SimnetProcess(
        tmp_path_factory.mktemp("simnet"), args=[str(a) for a in marker.args] if marker else ()
    )
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def ldp_config_factory(
    simnet: SimnetProcess, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., LdpConfig]:
    """Write a config pointing at ``simnet``: a fresh state dir, the HTTP API and metrics
    on free loopback ports, one new API token per role (admin, invoice, readonly).

    Call it as ``ldp_config_factory(core={...}, lnd={...}, plugins={"name": {...}})``;
    each table is deep-merged over the defaults (a value of None removes a key).
    """

    def make(
        *,
        core: Mapping[str, Any] | None = None,
        lnd: Mapping[str, Any] | None = None,
        plugins: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> LdpConfig:
        directory = tmp_path_factory.mktemp("ldp")
        tokens = new_tokens()
        data = daemon_config(
            simnet,
            directory / "state",
            api_listen=f"127.0.0.1:{free_port()}",
            metrics_listen=f"127.0.0.1:{free_port()}",
            token_hashes=hash_tokens(tokens),
            core=core,
            lnd=lnd,
            plugins=plugins,
        )
        path = write_config(directory / "config.toml", data)
        api = data["plugins"].get("http_api", {}).get("listen", "")
        metrics = data["plugins"].get("metrics", {}).get("listen", "")
        return LdpConfig(
            path=path,
            state_dir=Path(data["core"]["state_dir"]),
            api_url=f"http://{api}" if api else "",
            metrics_url=f"http://{metrics}/metrics" if metrics else "",
            tokens=tokens,
            data=data,
        )

    return make


@pytest.fixture
def ldp_daemon_factory(
    simnet: SimnetProcess, ldp_config_factory: Callable[..., LdpConfig]
) -> Iterator[Callable[..., LdpDaemon]]:
    """Start ``lightningd-py run`` and wait for READY=1 (default timeout 20 s).

    ``ldp_daemon_factory(config=None, *, env=None, launcher=None, wait_ready=True,
    timeout=20, core=..., lnd=..., plugins=...)``: without ``config`` one is written with
    the given tables; ``launcher`` replaces ``python -m lightningd_py.cli``. Every daemon
    started is stopped (SIGTERM) after the test.
    """
    started: list[LdpDaemon] = []

    def start(
        config: LdpConfig | None = None,
        *,
        env: Mapping[str, str] | None = None,
        launcher: Sequence[str] | None = None,
        wait_ready: bool = True,
        timeout: float = 20.0,
        **tables: Any,
    ) -> LdpDaemon:
        if config is None:
            config = ldp_config_factory(**tables)
        elif tables:
            raise TypeError("pass either a config or core/lnd/plugins tables, not both")
        daemon = LdpDaemon(config, simnet, env=env, launcher=launcher)
        started.append(daemon)
        return daemon.start(wait_ready=wait_ready, timeout=timeout)  # type: ignore[return-value]

    yield start
    for daemon in reversed(started):
        daemon.close()


@pytest.fixture
def ldp_daemon(ldp_daemon_factory: Callable[..., LdpDaemon]) -> LdpDaemon:
    """A daemon with the default config, READY (see ``ldp_daemon_factory``).

    Offers ``config_path``, ``state_dir``, ``api_url``, ``metrics_url``, ``tokens`` (by
    role), ``notifications``, ``signal(sig)``, ``stop()``, ``kill9()``, ``restart()``,
    ``logs()``, ``wait_for(predicate, timeout)`` and ``simnet``.
    """
    return ldp_daemon_factory()
