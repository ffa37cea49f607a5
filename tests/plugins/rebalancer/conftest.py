"""Fixtures for the rebalancer's end-to-end tests: a simnet with one channel per peer
(so a circular payment's last hop lands on exactly the channel meant), a daemon on it,
and a small HTTP client for the API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lightningd_py.demo import SimnetProcess, wait_for

CHANNELS = 6


@pytest.fixture
def simnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimnetProcess]:
    node = SimnetProcess(
        tmp_path_factory.mktemp("simnet"),
        args=["--channels", str(CHANNELS), "--peers", str(CHANNELS), "--seed", "7"],
    )
    node.start()
    try:
        yield node
    finally:
        node.stop()


class Api:
    """JSON over HTTP to the daemon's API with one role's token."""

    def __init__(self, base: str, tokens: dict[str, str]) -> None:
        self.base = base
        self.tokens = tokens

    def call(
        self, method: str, path: str, body: Any = None, role: str = "admin", timeout: float = 60.0
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=data,
            headers={"Authorization": f"Bearer {self.tokens[role]}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def ok(self, method: str, path: str, body: Any = None, role: str = "admin") -> Any:
        status, answer = self.call(method, path, body, role)
        assert status == 200, (method, path, status, answer)
        return answer

    def events(self, types: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The first ``count`` journaled events of ``types`` from the SSE stream."""
        request = urllib.request.Request(
            f"{self.base}/v1/events?types={types}&last_event_id=0",
            headers={"Authorization": f"Bearer {self.tokens['readonly']}"},
        )
        found: list[dict[str, Any]] = []
        with urllib.request.urlopen(request, timeout=timeout) as response:
            for raw in response:
                line = raw.decode().rstrip("\n")
                if line.startswith("data: "):
                    found.append(json.loads(line[6:]))
                    if len(found) >= count:
                        break
        return found

    def metrics_text(self, url: str) -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()


def channels(simnet: SimnetProcess) -> dict[int, dict[str, Any]]:
    """simnet's open channels by id, from its control API."""
    return {int(c["chan_id"]): c for c in simnet.control.state()["channel_list"] if c["status"] == "open"}


def set_ratios(simnet: SimnetProcess, ratios: dict[int, float]) -> None:
    for chan_id, ratio in ratios.items():
        capacity = channels(simnet)[chan_id]["capacity_sat"]
        simnet.control.set_balance(chan_id, int(capacity * ratio) * 1000)


def ratio(simnet: SimnetProcess, chan_id: int) -> float:
    c = channels(simnet)[chan_id]
    return c["local_msat"] / (c["local_msat"] + c["remote_msat"])


@pytest.fixture
def start_rebalancer(ldp_daemon_factory: Callable[..., Any]) -> Callable[..., tuple[Any, Api]]:
    """Start a daemon with the given ``[plugins.rebalancer]`` table; wait until LND is active."""

    def start(**settings: Any) -> tuple[Any, Api]:
        # The API's own rate limits are the http_api plugin's business (and tested there).
        limits = {"rate_limits": {"general": "0", "rebalance": "0"}}
        daemon = ldp_daemon_factory(plugins={"rebalancer": settings, "http_api": limits})
        api = Api(daemon.api_url, daemon.tokens)
        wait_for(lambda: api.call("GET", "/v1/health", role="readonly")[1]["lnd"]["active"], timeout=20)
        return daemon, api

    return start


def overrides(state_dir: Path) -> str:
    path = state_dir / "overrides.toml"
    return path.read_text() if path.exists() else ""
