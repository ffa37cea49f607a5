"""The daemon as a process, the way systemd and users see it: sd_notify, signals, LND
restarts and crashes, with the journal and plugin cursors read from its database."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from pathlib import Path

import anyio
import pytest
from lightningd_py.plugins.invoice_tracker import records

from lightningd_py.demo import write_config
from lightningd_py.store import Store

SETTLED = "invoice.settled"


def db(state_dir: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{state_dir / 'lightningd-py.sqlite'}?mode=ro", uri=True, timeout=10)
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def settled_counts(state_dir: Path) -> tuple[int, int]:
    """(settlement events journaled, distinct invoices they are for)."""
    with db(state_dir) as conn:
        rows = conn.execute("SELECT body FROM journal WHERE type = ?", (SETTLED,)).fetchall()
    from lightningd_py.events import decode_event

    hashes = [decode_event(body, 0).payment_hash for (body,) in rows]
    return len(hashes), len(set(hashes))


def cursors(state_dir: Path) -> dict[str, int]:
    with db(state_dir) as conn:
        return dict(conn.execute("SELECT plugin, position FROM journal_cursors").fetchall())


def last_id(state_dir: Path) -> int:
    with db(state_dir) as conn:
        return conn.execute("SELECT COALESCE(MAX(id), 0) FROM journal").fetchone()[0]


def tracker_paid(state_dir: Path) -> int:
    with db(state_dir) as conn:
        return conn.execute("SELECT COUNT(*) FROM invoice_tracker_invoices WHERE status = 'paid'").fetchone()[
            0
        ]


# Plugins with event hooks: each must have seen every event.
EVENT_PLUGINS = ("invoice_tracker", "webhooks", "metrics", "rebalancer")


def all_plugins_caught_up(state_dir: Path) -> bool:
    top = last_id(state_dir)
    have = cursors(state_dir)
    return all(have.get(name, 0) >= top for name in EVENT_PLUGINS)


def test_ready_status_and_graceful_stop(ldp_daemon) -> None:
    assert "READY=1" in ldp_daemon.notifications
    ldp_daemon.wait_for(lambda: "STATUS=LND active" in ldp_daemon.notifications, timeout=15)
    assert ldp_daemon.stop() == 0
    assert "STOPPING=1" in ldp_daemon.notifications
    assert '"event": "stopped"' in ldp_daemon.logs()


def test_an_older_database_is_upgraded_before_ready_with_more_time_asked_of_systemd(
    ldp_config_factory, ldp_daemon_factory
) -> None:
    # The database as the first release of the invoice tracker left it, with an invoice.
    config = ldp_config_factory()
    path = config.state_dir / "lightningd-py.sqlite"
    store = Store(path)
    store.open()
    store.migrate("invoice_tracker", records.migrations()[:1])
    anyio.run(store.close)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO invoice_tracker_invoices (payment_hash, status, created_at) "
            "VALUES (?, 'pending', 1)",
            ("ab" * 32,),
        )
    daemon = ldp_daemon_factory(config)
    ready = daemon.notifications.index("READY=1")
    upgrading = daemon.notifications.index("STATUS=upgrading the database")
    assert upgrading < ready
    assert f"EXTEND_TIMEOUT_USEC={30 * 1_000_000}" in daemon.notifications[:ready]
    assert '"owners": ["invoice_tracker"]' in daemon.logs()
    with db(config.state_dir) as conn:
        assert conn.execute("SELECT id, payment_hash FROM invoice_tracker_invoices").fetchall() == [
            (1, "ab" * 32)
        ]
    # Started again, there is nothing to upgrade and nothing is asked of systemd.
    mark = len(daemon.notifications)
    daemon.restart()
    assert not any(n.startswith("EXTEND_TIMEOUT_USEC=") for n in daemon.notifications[mark:])


def test_sigint_also_stops_cleanly(ldp_daemon) -> None:
    ldp_daemon.signal(signal.SIGINT)
    ldp_daemon.process.wait(15)
    assert ldp_daemon.returncode == 0
    assert "STOPPING=1" in ldp_daemon.notifications


@pytest.mark.simnet_args("--locked")
def test_ready_while_lnd_is_locked_then_follows_it(ldp_daemon) -> None:
    # LND may stay locked for minutes: readiness does not wait for it, STATUS says why.
    assert "READY=1" in ldp_daemon.notifications
    ldp_daemon.wait_for(lambda: "STATUS=LND wallet is locked" in ldp_daemon.notifications, timeout=15)
    ldp_daemon.simnet.control.unlock()
    ldp_daemon.wait_for(lambda: "STATUS=LND active" in ldp_daemon.notifications, timeout=20)
    with db(ldp_daemon.state_dir) as conn:
        states = [t for (t,) in conn.execute("SELECT type FROM journal WHERE type = 'node.state'")]
    assert len(states) >= 2


def test_unreachable_lnd_is_reported_and_reconnected(simnet, ldp_daemon_factory) -> None:
    daemon = ldp_daemon_factory(lnd={"reconnect_min": 0.2, "reconnect_max": 1.0})
    daemon.wait_for(lambda: "STATUS=LND active" in daemon.notifications, timeout=15)
    simnet.stop()
    daemon.wait_for(
        lambda: any(f.startswith("STATUS=LND unreachable") for f in daemon.notifications), timeout=15
    )
    simnet.restart_process()
    mark = len(daemon.notifications)
    daemon.wait_for(lambda: "STATUS=LND active" in daemon.notifications[mark:], timeout=20)


def test_sighup_reloads_and_rejects_a_bad_file(ldp_daemon) -> None:
    path = ldp_daemon.config_path
    original = path.read_text()
    path.write_text(original.replace('log_format = "json"', 'log_format = "json"\nlog_level = "debug"'))
    mark = len(ldp_daemon.notifications)
    ldp_daemon.signal(signal.SIGHUP)
    ldp_daemon.wait_notification("RELOADING=1", after=mark)
    ldp_daemon.wait_notification("READY=1", after=mark)
    ldp_daemon.wait_for(lambda: "config reloaded" in ldp_daemon.logs())

    path.write_text(original + "\n[core.nonsense]\n")
    mark = len(ldp_daemon.notifications)
    ldp_daemon.signal(signal.SIGHUP)
    ldp_daemon.wait_notification("READY=1", after=mark)
    ldp_daemon.wait_for(lambda: "config reload rejected" in ldp_daemon.logs())
    assert ldp_daemon.returncode is None


def test_lnd_restart_mid_stream_loses_nothing(simnet, ldp_daemon_factory) -> None:
    daemon = ldp_daemon_factory(lnd={"reconnect_min": 0.2, "reconnect_max": 1.0})
    daemon.wait_for(lambda: "STATUS=LND active" in daemon.notifications, timeout=15)
    simnet.control.burst_settle(1500)
    # LND goes away while the daemon is still reading the burst; more is paid while it is down.
    mark = len(daemon.notifications)
    simnet.control.restart(down_seconds=1.0)
    daemon.wait_for(
        lambda: any(
            f.startswith("STATUS=") and f != "STATUS=LND active" for f in daemon.notifications[mark:]
        ),
        timeout=20,
    )
    daemon.wait_notification("STATUS=LND active", timeout=20, after=len(daemon.notifications) - 1)
    simnet.control.burst_settle(1500)
    daemon.wait_for(lambda: settled_counts(daemon.state_dir)[0] >= 3000, timeout=60, interval=0.2)
    assert settled_counts(daemon.state_dir) == (3000, 3000)
    daemon.wait_for(lambda: all_plugins_caught_up(daemon.state_dir), timeout=60, interval=0.2)
    assert tracker_paid(daemon.state_dir) == 3000


@pytest.mark.slow
def test_kill9_during_a_burst_then_restart(simnet, ldp_daemon_factory) -> None:
    daemon = ldp_daemon_factory()
    daemon.wait_for(lambda: "STATUS=LND active" in daemon.notifications, timeout=15)
    burst = threading.Thread(target=simnet.control.burst_settle, args=(5000,))
    burst.start()
    daemon.wait_for(lambda: settled_counts(daemon.state_dir)[0] >= 500, timeout=30, interval=0.05)
    daemon.kill9()
    burst.join(60)
    journaled_before = settled_counts(daemon.state_dir)[0]
    assert journaled_before < 5000 or not all_plugins_caught_up(daemon.state_dir)

    daemon.start()
    daemon.wait_for(lambda: settled_counts(daemon.state_dir)[0] >= 5000, timeout=90, interval=0.2)
    # Every settlement journaled exactly once ...
    assert settled_counts(daemon.state_dir) == (5000, 5000)
    # ... and delivered to every plugin (cursors past the last event, tracker rows paid).
    daemon.wait_for(lambda: all_plugins_caught_up(daemon.state_dir), timeout=90, interval=0.2)
    assert tracker_paid(daemon.state_dir) == 5000
    assert daemon.stop() == 0


def test_bad_config_exits_2_before_starting(tmp_path: Path, simnet) -> None:
    from lightningd_py.demo import DaemonProcess

    path = write_config(
        tmp_path / "config.toml",
        {
            "core": {"state_dir": str(tmp_path / "state"), "hook_timeout": "soon"},
            "lnd": {
                "host": simnet.grpc,
                "tls_cert": str(simnet.tls_cert),
                "macaroon": str(simnet.admin_macaroon),
            },
        },
    )
    proc = DaemonProcess(path, log_path=tmp_path / "log")
    with pytest.raises(RuntimeError, match="exited with 2"):
        proc.start(timeout=10)
    assert "core.hook_timeout" in proc.logs()
    assert not (tmp_path / "state").exists()
    proc.close()


def test_plugin_failing_at_startup_refuses_or_is_skipped(ldp_config_factory, ldp_daemon_factory) -> None:
    # A webhooks endpoint that cannot be reached is not a start failure; a metrics port
    # already taken is: the daemon refuses to start, or starts without it when told to.
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        config = ldp_config_factory(plugins={"metrics": {"listen": f"127.0.0.1:{port}"}})
        with pytest.raises(RuntimeError, match="exited with 3"):
            ldp_daemon_factory(config, timeout=15)
        skipping = ldp_config_factory(
            core={"plugin_failure": "skip"}, plugins={"metrics": {"listen": f"127.0.0.1:{port}"}}
        )
        daemon = ldp_daemon_factory(skipping, timeout=15)
        assert "plugin failed to start; disabled" in daemon.logs()
    finally:
        taken.close()


def test_lnd_rpc_latency_is_measured(ldp_daemon) -> None:
    import urllib.request

    ldp_daemon.wait_for(lambda: "STATUS=LND active" in ldp_daemon.notifications, timeout=15)
    request = urllib.request.Request(
        f"{ldp_daemon.api_url}/v1/node", headers={"Authorization": f"Bearer {ldp_daemon.tokens['readonly']}"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200

    def scraped() -> str:
        with urllib.request.urlopen(ldp_daemon.metrics_url, timeout=10) as resp:
            return resp.read().decode()

    text = ldp_daemon.wait_for(lambda: "lightningd_lnd_rpc_duration_seconds_count" in scraped() and scraped())
    assert 'lightningd_lnd_rpc_duration_seconds_count{rpc="GetInfo"}' in text


def glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


def thread_arenas(pid: int) -> int:
    """glibc's malloc arenas besides the main one: each starts a 64 MiB-aligned
    anonymous heap (a stray mapping lands on such an address once in 16,384)."""
    count = 0
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        start = int(fields[0].split("-")[0], 16)
        if len(fields) == 5 and fields[1].startswith("rw") and start % (64 << 20) == 0:
            count += 1
    return count


@pytest.mark.skipif(not glibc(), reason="malloc arenas are glibc's")
def test_malloc_arenas_are_capped_unless_the_environment_chooses(ldp_daemon_factory) -> None:
    capped = ldp_daemon_factory()
    chosen = ldp_daemon_factory(env={"MALLOC_ARENA_MAX": "16"})
    for daemon in (capped, chosen):
        # By then the writer, the readers and gRPC's threads have all allocated.
        daemon.wait_for(lambda d=daemon: "STATUS=LND active" in d.notifications, timeout=15)
    assert thread_arenas(capped.pid) <= 2
    assert thread_arenas(chosen.pid) >= 4
