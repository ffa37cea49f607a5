"""The gRPC client implementation the daemon asks for (``lightningd_py/__init__.py``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Imports the package, then makes gRPC start a connection (to a closed port), so gRPC
# has read its experiments and reported any it does not know.
_PROBE = """
import os
import lightningd_py
import grpc
channel = grpc.insecure_channel("127.0.0.1:1")
try:
    grpc.channel_ready_future(channel).result(timeout=0.3)
except grpc.FutureTimeoutError:
    pass
print(os.environ["GRPC_EXPERIMENTS"])
"""


def _run(experiments: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    if experiments is not None:
        env["GRPC_EXPERIMENTS"] = experiments
    return subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60, check=True
    )


def test_the_iomgr_client_is_asked_for_and_grpc_knows_the_experiment() -> None:
    done = _run(None)
    assert done.stdout.strip() == "-event_engine_client"
    # A grpcio that no longer has the experiment says so on every start.
    assert "Unknown experiment" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("own", "expected"),
    [
        ("-event_engine_dns", "-event_engine_dns,-event_engine_client"),
        ("event_engine_client", "event_engine_client"),
        ("-event_engine_dns, -event_engine_client", "-event_engine_dns, -event_engine_client"),
        # Another experiment whose name starts with this one's is not this one.
        (
            "-event_engine_client_channel_resolver",
            "-event_engine_client_channel_resolver,-event_engine_client",
        ),
        ("", "-event_engine_client"),
    ],
)
def test_an_operators_own_experiments_are_kept(own: str, expected: str) -> None:
    assert _run(own).stdout.strip() == expected
