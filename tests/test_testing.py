"""The process handles behind the pytest fixtures (lightningd_py.demo / .testing), driven
with a stand-in daemon that speaks sd_notify, so their own behaviour is pinned down
independently of the real daemon."""

from __future__ import annotations

import hashlib
import signal
import socket
import stat
import sys
import tomllib
from pathlib import Path

import pytest

from lightningd_py.demo import DaemonProcess, SimnetProcess, daemon_config, free_port, wait_for, write_config

STAND_IN = r"""
import os, signal, socket, sys, time
address = os.environ["NOTIFY_SOCKET"]
address = "\0" + address[1:] if address.startswith("@") else address
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
def send(message):
    sock.sendto(message.encode(), address)
def stop(*_):
    send("STOPPING=1")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGHUP, lambda *_: send("RELOADING=1\nREADY=1"))
print("argv", sys.argv[1:], flush=True)
mode = os.environ.get("STAND_IN_MODE", "")
if mode == "fail":
    print("refusing: bad config", file=sys.stderr, flush=True)
    sys.exit(2)
send("STATUS=starting")
if mode != "never-ready":
    send("READY=1\nSTATUS=serving")
while True:
    time.sleep(1)
"""


def stand_in(tmp_path: Path, **env: str) -> DaemonProcess:
    return DaemonProcess(
        tmp_path / "config.toml",
        log_path=tmp_path / "daemon.log",
        env=env,
        launcher=[sys.executable, "-c", STAND_IN],
    )


@pytest.fixture
def daemon(tmp_path: Path):
    process = stand_in(tmp_path)
    yield process
    process.close()


def test_start_waits_for_ready_and_records_every_field(daemon, tmp_path):
    daemon.start(timeout=10)
    assert daemon.notifications[:3] == ["STATUS=starting", "READY=1", "STATUS=serving"]
    assert daemon.returncode is None
    assert f"argv ['run', '--config', '{tmp_path / 'config.toml'}']" in daemon.logs()


def test_signals_stop_restart_and_kill(daemon):
    daemon.start(timeout=10)
    mark = len(daemon.notifications)
    daemon.signal(signal.SIGHUP)
    assert daemon.wait_notification("RELOADING=1", after=mark) == "RELOADING=1"
    assert daemon.stop() == 0
    assert daemon.notifications[-1] == "STOPPING=1"
    first = daemon.pid
    daemon.restart(timeout=10)
    assert daemon.pid != first and daemon.notifications.count("READY=1") >= 2
    daemon.kill9()
    assert daemon.returncode == -signal.SIGKILL
    assert daemon.logs().count("argv") == 2  # logs accumulate across restarts


def test_early_exit_reports_the_log(tmp_path):
    process = stand_in(tmp_path, STAND_IN_MODE="fail")
    try:
        with pytest.raises(RuntimeError, match=r"exited with 2 before READY=1:\n(.|\n)*refusing: bad config"):
            process.start(timeout=10)
    finally:
        process.close()


def test_no_ready_times_out_and_kills(tmp_path):
    process = stand_in(tmp_path, STAND_IN_MODE="never-ready")
    try:
        with pytest.raises(TimeoutError, match="no READY=1 from lightningd-py within 1 s"):
            process.start(timeout=1)
        assert process.returncode == -signal.SIGKILL
        assert "STATUS=starting" in process.notifications
    finally:
        process.close()


def test_wait_for_returns_the_value_or_times_out():
    values = iter([0, None, "", 7])
    assert wait_for(lambda: next(values), timeout=5, interval=0) == 7
    with pytest.raises(TimeoutError, match=r"condition not met within 0\.05 s"):
        wait_for(lambda: False, timeout=0.05)


def test_free_port_prefers_the_given_port():
    port = free_port()
    assert free_port(preferred=port) == port
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert free_port(preferred=taken) != taken


def test_daemon_config_points_at_simnet_and_merges_tables(tmp_path):
    node = SimnetProcess(tmp_path / "simnet")
    node.info = {
        "grpc": "127.0.0.1:10111",
        "control": "http://127.0.0.1:10112",
        "tls_cert": "/x/tls.cert",
        "admin_macaroon": "/x/admin.macaroon",
    }
    data = daemon_config(
        node,
        tmp_path / "state",
        api_listen="127.0.0.1:1",
        metrics_listen="127.0.0.1:2",
        token_hashes={"admin": "a" * 64},
        core={"log_level": "debug"},
        plugins={"metrics": {"listen": None}, "webhooks": {"enabled": False}},
    )
    assert data == {
        "core": {"state_dir": str(tmp_path / "state"), "log_format": "json", "log_level": "debug"},
        "lnd": {"host": "127.0.0.1:10111", "tls_cert": "/x/tls.cert", "macaroon": "/x/admin.macaroon"},
        "plugins": {
            "http_api": {
                "listen": "127.0.0.1:1",
                "tokens": [{"name": "admin", "role": "admin", "sha256": "a" * 64}],
            },
            "metrics": {},
            "webhooks": {"enabled": False},
        },
    }
    path = write_config(tmp_path / "c" / "config.toml", data)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tomllib.loads(path.read_text()) == data


# ---------------------------------------------------------------- the fixtures themselves


def test_simnet_fixture_serves_and_restarts_like_lnd(simnet):
    for key in ("tls_cert", "admin_macaroon", "invoice_macaroon", "readonly_macaroon"):
        assert getattr(simnet, key).is_file()
    assert simnet.lnddir.is_dir()
    assert simnet.control.state()["state"] == "SERVER_ACTIVE"
    invoice = simnet.control.add_invoice(value_msat=5000, memo="kept")
    simnet.restart(down_seconds=0.1)
    state = simnet.control.state()
    assert state["state"] == "SERVER_ACTIVE" and state["invoices"] == 1, invoice


def test_simnet_process_restart_keeps_ports_and_credentials(simnet):
    grpc, control, cert = simnet.grpc, simnet.control_url, simnet.tls_cert.read_bytes()
    simnet.restart_process()
    assert (simnet.grpc, simnet.control_url) == (grpc, control)
    assert simnet.tls_cert.read_bytes() == cert
    assert simnet.control.state()["state"] == "SERVER_ACTIVE"


@pytest.mark.simnet_args("--locked", "--channels", "2")
def test_simnet_args_marker(simnet):
    state = simnet.control.state()
    assert state["state"] == "LOCKED"
    assert state["channels"]["open"] == 2


def test_config_factory_writes_a_config_for_the_simnet(ldp_config_factory, simnet):
    config = ldp_config_factory(core={"log_level": "debug"}, plugins={"webhooks": {"enabled": False}})
    data = tomllib.loads(config.path.read_text())
    assert data == config.data
    assert data["lnd"] == {
        "host": simnet.grpc,
        "tls_cert": str(simnet.tls_cert),
        "macaroon": str(simnet.admin_macaroon),
    }
    assert data["core"]["log_level"] == "debug" and data["plugins"]["webhooks"] == {"enabled": False}
    assert config.state_dir == config.path.parent / "state"
    assert config.api_url == "http://" + data["plugins"]["http_api"]["listen"]
    assert config.metrics_url == "http://" + data["plugins"]["metrics"]["listen"] + "/metrics"
    hashes = {t["role"]: t["sha256"] for t in data["plugins"]["http_api"]["tokens"]}
    assert set(config.tokens) == set(hashes) == {"admin", "invoice", "readonly"}
    for role, token in config.tokens.items():
        assert hashlib.sha256(token.encode()).hexdigest() == hashes[role]
    assert stat.S_IMODE(config.path.stat().st_mode) == 0o600
