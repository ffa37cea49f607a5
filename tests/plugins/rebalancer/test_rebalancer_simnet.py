"""The rebalancer end to end: the daemon as a process, its HTTP API, LND's gRPC API served
by simnet, with balances set through simnet's control API."""

from __future__ import annotations

import os
import signal
import threading
import time
import tomllib
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from lightningd_py.demo import wait_for

from .conftest import channels, overrides, ratio, set_ratios


def _pair(simnet: Any) -> tuple[int, int, list[int]]:
    ids = sorted(channels(simnet))
    depleted, surplus, rest = ids[0], ids[1], ids[2:]
    set_ratios(simnet, {depleted: 0.05, surplus: 0.95, **dict.fromkeys(rest, 0.5)})
    return depleted, surplus, rest


def _metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name} {labels}")


def test_depleted_channel_is_brought_to_target_within_the_fee_limit(simnet, start_rebalancer) -> None:
    daemon, api = start_rebalancer(economic_check=False, max_fee_ppm=1000)
    depleted, surplus, _ = _pair(simnet)

    advice = api.ok("GET", "/v1/rebalance/recommendations", role="readonly")
    by_id = {c["chan_id"]: c for c in advice["channels"]}
    assert by_id[depleted]["status"] == "depleted" and by_id[surplus]["status"] == "surplus"
    assert by_id[depleted]["priority"] > by_id[next(iter(set(by_id) - {depleted, surplus}))]["priority"]
    assert advice["rebalances"][0]["incoming_chan_id"] == depleted
    assert advice["rebalances"][0]["outgoing_chan_id"] == surplus

    result = api.ok(
        "POST", "/v1/rebalance/execute", {"outgoing_chan_id": surplus, "incoming_chan_id": depleted}
    )
    assert result["status"] == "succeeded", result
    assert 0 < result["fee_msat"] <= result["moved_msat"] * 1000 // 1_000_000
    assert result["fee_msat"] <= result["max_fee_msat"]
    assert abs(ratio(simnet, depleted) - 0.5) < 0.01
    assert abs(ratio(simnet, surplus) - 0.5) < 0.01

    history = api.ok("GET", "/v1/rebalance/history", role="readonly")["rebalances"]
    run = history[0]
    assert run["rebalance_id"] == result["rebalance_id"] and run["status"] == "succeeded"
    attempt = run["attempt_log"][0]
    assert attempt["status"] == "succeeded" and attempt["fee_msat"] == result["fee_msat"]
    assert attempt["route"][0]["chan_id"] == surplus and attempt["route"][-1]["chan_id"] == depleted

    (event,) = api.events("rebalance.*", 1)
    assert event["type"] == "rebalance.succeeded" and event["rebalance_id"] == result["rebalance_id"]
    assert event["fee_msat"] == result["fee_msat"] and event["amount_msat"] == result["moved_msat"]

    budget = api.ok("GET", "/v1/rebalance/budget", role="readonly")
    assert budget["spent_msat"] == result["fee_msat"] and budget["reserved_msat"] == 0
    text = api.metrics_text(daemon.metrics_url)
    assert _metric(text, "lightningd_rebalancer_rebalances_total", result="succeeded") == 1
    assert _metric(text, "lightningd_rebalancer_fees_paid_msat_total") == result["fee_msat"]
    assert _metric(text, "lightningd_rebalancer_budget_used_msat") == result["fee_msat"]


def test_no_route_within_the_fee_limit_pays_nothing_and_reports_failure(simnet, start_rebalancer) -> None:
    _daemon, api = start_rebalancer(economic_check=False, max_fee_ppm=1, max_attempts=3)
    depleted, surplus, _ = _pair(simnet)
    before = channels(simnet)

    result = api.ok(
        "POST", "/v1/rebalance/execute", {"outgoing_chan_id": surplus, "incoming_chan_id": depleted}
    )
    assert result["status"] == "failed"
    assert result["failure_reason"] == "FAILURE_REASON_NO_ROUTE"
    assert result["fee_msat"] == 0 and result["moved_msat"] == 0 and result["attempts"] == 3
    after = channels(simnet)
    assert {k: v["local_msat"] for k, v in after.items()} == {k: v["local_msat"] for k, v in before.items()}

    run = api.ok("GET", "/v1/rebalance/history", role="readonly")["rebalances"][0]
    amounts = [a["amount_msat"] for a in run["attempt_log"]]
    assert amounts == [amounts[0], amounts[0] // 2, amounts[0] // 4]  # smaller after each failure
    assert all(a["status"] == "failed" and a["fee_msat"] == 0 for a in run["attempt_log"])
    assert api.ok("GET", "/v1/rebalance/budget", role="readonly")["used_msat"] == 0

    (event,) = api.events("rebalance.*", 1)
    assert event["type"] == "rebalance.failed" and event["failure_reason"] == "FAILURE_REASON_NO_ROUTE"

    # Both channels cool down after the failure.
    status, error = api.call(
        "POST", "/v1/rebalance/execute", {"outgoing_chan_id": surplus, "incoming_chan_id": depleted}
    )
    assert status == 409 and error["error"]["code"] == "cooldown"
    assert error["error"]["field"] == "outgoing_chan_id"


def test_uneconomic_rebalance_is_skipped_unless_told(simnet, start_rebalancer) -> None:
    _daemon, api = start_rebalancer(
        max_fee_ppm=1000, fee_policy={"min_ppm": 0, "max_ppm": 0, "base_fee_msat": 0, "min_change_ppm": 0}
    )
    depleted, surplus, _ = _pair(simnet)
    # Our own rate on every channel becomes 0: nothing a rebalance pays can be earned back.
    api.ok("POST", "/v1/rebalance/fee-policy/apply?dry_run=false")
    result = api.ok(
        "POST", "/v1/rebalance/execute", {"outgoing_chan_id": surplus, "incoming_chan_id": depleted}
    )
    assert result["status"] == "failed" and result["failure_reason"].startswith("uneconomic")
    assert result["attempts"] == 0 and abs(ratio(simnet, depleted) - 0.05) < 0.001
    forced = api.ok(
        "POST",
        "/v1/rebalance/execute",
        {"outgoing_chan_id": surplus, "incoming_chan_id": depleted, "ignore_economics": True},
    )
    assert forced["status"] == "succeeded"


def test_scheduler_and_concurrent_runs_never_exceed_the_budget(simnet, start_rebalancer) -> None:
    # Each route costs 1040 to 2040 msat here: at most two fit, the third cannot.
    budget = 2_500
    daemon, api = start_rebalancer(
        economic_check=False,
        max_fee_ppm=5000,
        max_fee_msat=2_100,
        daily_budget_msat=budget,
        parallel=4,
        cooldown=0,
        min_amount_sat=1_000,
        max_amount_sat=20_000,
        scheduler={"interval": 10},
    )
    ids = sorted(channels(simnet))
    set_ratios(simnet, {i: (0.05 if n % 2 == 0 else 0.95) for n, i in enumerate(ids)})

    # Manual runs racing each other and the scheduler.
    results: list[Any] = []

    def manual() -> None:
        results.append(api.call("POST", "/v1/rebalance/execute", {}))

    threads = [threading.Thread(target=manual) for _ in range(4)]
    assert api.ok("POST", "/v1/rebalance/scheduler/start")["running"] is True
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def round_done() -> bool:
        state = api.ok("GET", "/v1/rebalance/scheduler", role="readonly")
        return state["last_round"] is not None and not state["round_in_progress"]

    wait_for(round_done, timeout=30, interval=0.1)
    assert api.ok("POST", "/v1/rebalance/scheduler/stop")["running"] is False
    assert api.ok("GET", "/v1/rebalance/budget", role="readonly")["reserved_msat"] == 0

    runs = api.ok("GET", "/v1/rebalance/history?limit=500", role="readonly")["rebalances"]
    paid = sum(r["fee_msat"] for r in runs)
    assert any(r["status"] == "succeeded" for r in runs)
    assert any(r["failure_reason"] == "budget_exhausted" for r in runs)
    assert paid <= budget
    state = api.ok("GET", "/v1/rebalance/budget", role="readonly")
    assert state["spent_msat"] == paid and state["used_msat"] <= budget
    # Every attempt's fee stayed within what it reserved.
    for r in runs:
        for a in r["attempt_log"]:
            assert a["fee_msat"] <= a["max_fee_msat"]
    assert "enabled = false" in overrides(daemon.config.state_dir)


def test_dry_run_changes_nothing(simnet, start_rebalancer) -> None:
    _daemon, api = start_rebalancer(dry_run=True, economic_check=False, max_fee_ppm=1000)
    _pair(simnet)
    before = simnet.control.state()
    round_ = api.ok("POST", "/v1/rebalance/auto")
    assert round_["dry_run"] is True and round_["planned"] >= 1
    assert all(r["status"] == "dry_run" and r["fee_msat"] == 0 for r in round_["results"])
    single = api.ok("POST", "/v1/rebalance/execute", {})
    assert single["status"] == "dry_run"
    after = simnet.control.state()
    assert after["channel_list"] == before["channel_list"]
    assert after["invoices"] == before["invoices"]
    assert api.ok("GET", "/v1/rebalance/budget", role="readonly")["used_msat"] == 0
    status, error = api.call("POST", "/v1/rebalance/auto")
    assert status == 429 and error["error"]["code"] == "too_soon"


def test_bad_requests_name_the_field(simnet, start_rebalancer) -> None:
    _, api = start_rebalancer()
    depleted, surplus, rest = _pair(simnet)
    cases = [
        (
            {"outgoing_chan_id": 12345, "incoming_chan_id": depleted},
            404,
            "unknown_channel",
            "outgoing_chan_id",
        ),
        ({"outgoing_chan_id": surplus, "incoming_chan_id": surplus}, 400, "same_peer", "incoming_chan_id"),
        ({"amount_sat": 5}, 400, "amount_too_small", "amount_sat"),
        ({"amount_sat": "lots"}, 400, "invalid_field", "amount_sat"),
        ({"outgoing_chan_id": surplus, "bogus": 1}, 400, "unknown_field", "bogus"),
        ({"outgoing_chan_id": rest[0], "incoming_chan_id": rest[1]}, 409, "nothing_to_move", "amount_sat"),
    ]
    for body, status, code, field in cases:
        got, error = api.call("POST", "/v1/rebalance/execute", body)
        assert (got, error["error"]["code"], error["error"]["field"]) == (status, code, field), body
    assert api.call("POST", "/v1/rebalance/execute", {}, role="readonly")[0] == 403
    assert api.call("POST", "/v1/rebalance/execute", {}, role="invoice")[0] == 403
    assert api.call("GET", "/v1/rebalance/history?limit=0", role="readonly")[0] == 400
    assert api.ok("GET", "/v1/rebalance/history", role="readonly")["rebalances"] == []


def test_config_overrides_round_trip(simnet, start_rebalancer) -> None:
    daemon, api = start_rebalancer(max_fee_ppm=100)
    operator_file = daemon.config.path.read_text()
    assert api.ok("GET", "/v1/rebalance/config", role="readonly")["max_fee_ppm"] == 100

    changed = api.ok(
        "PUT",
        "/v1/rebalance/config",
        {"max_fee_ppm": 250, "fee_policy": {"max_ppm": 700}, "exclude_channels": [5]},
    )
    assert changed["max_fee_ppm"] == 250 and changed["fee_policy"]["max_ppm"] == 700
    assert changed["fee_policy"]["min_ppm"] == 1  # untouched keys keep their values
    saved = tomllib.loads(overrides(daemon.config.state_dir))["plugins"]["rebalancer"]
    assert saved == {"max_fee_ppm": 250, "fee_policy": {"max_ppm": 700}, "exclude_channels": [5]}
    assert daemon.config.path.read_text() == operator_file
    assert oct(os.stat(daemon.config.state_dir / "overrides.toml").st_mode & 0o777) == "0o600"

    status, error = api.call("PUT", "/v1/rebalance/config", {"min_ratio": 0.9})
    assert status == 400 and error["error"]["field"] == "body.target_ratio"
    status, error = api.call("PUT", "/v1/rebalance/config", {"max_fee_ppm": -1})
    assert status == 400 and error["error"]["field"] == "body.max_fee_ppm"
    status, error = api.call("PUT", "/v1/rebalance/config", {"no_such_key": 1})
    assert status == 400 and error["error"]["field"] == "no_such_key"
    status, error = api.call("PUT", "/v1/rebalance/config", {"backup": {"path": "/etc/x"}})
    assert status == 400 and error["error"]["field"] == "body.backup.path"
    status, _ = api.call("PUT", "/v1/rebalance/config", {"max_fee_ppm": 1}, role="readonly")
    assert status == 403

    daemon.restart()
    wait_for(lambda: api.call("GET", "/v1/rebalance/config", role="readonly")[0] == 200, timeout=20)
    after = api.ok("GET", "/v1/rebalance/config", role="readonly")
    assert (
        after["max_fee_ppm"] == 250
        and after["fee_policy"]["max_ppm"] == 700
        and after["exclude_channels"] == [5]
    )


def test_fee_policy_is_applied_and_recorded(simnet, start_rebalancer) -> None:
    _daemon, api = start_rebalancer(fee_policy={"min_ppm": 10, "max_ppm": 1010, "min_change_ppm": 1})
    ids = sorted(channels(simnet))
    set_ratios(simnet, {ids[0]: 0.1, ids[1]: 0.9, **dict.fromkeys(ids[2:], 0.5)})
    before = {c["chan_id"]: c for c in api.ok("GET", "/v1/rebalance/fee-policy", role="readonly")["channels"]}

    # The default is a dry run: recorded, nothing set.
    dry = api.ok("POST", "/v1/rebalance/fee-policy/apply")["changes"]
    assert dry and all(c["dry_run"] and not c["applied"] for c in dry)
    assert {
        c["chan_id"]: c for c in api.ok("GET", "/v1/rebalance/fee-policy", role="readonly")["channels"]
    } == before

    applied = api.ok("POST", "/v1/rebalance/fee-policy/apply?dry_run=false")["changes"]
    assert applied and all(c["applied"] and not c["dry_run"] and not c["error"] for c in applied)
    now = {c["chan_id"]: c for c in api.ok("GET", "/v1/rebalance/fee-policy", role="readonly")["channels"]}
    assert now[ids[0]]["fee_ppm"] == 910 and now[ids[1]]["fee_ppm"] == 110 and now[ids[2]]["fee_ppm"] == 510
    assert all(c["fee_ppm"] == c["policy_ppm"] for c in now.values())
    # Nothing left to change; the history holds both the dry run and the applied rows.
    assert api.ok("POST", "/v1/rebalance/fee-policy/apply?dry_run=false")["changes"] == []
    history = api.ok("GET", "/v1/rebalance/fee-policy/history?limit=100", role="readonly")["changes"]
    assert len(history) == len(dry) + len(applied)
    assert {(h["chan_id"], h["new_ppm"]) for h in history if h["applied"]} == {
        (c["chan_id"], c["new_ppm"]) for c in applied
    }


def test_backup_file_is_replaced_atomically_on_every_update(simnet, start_rebalancer) -> None:
    daemon, api = start_rebalancer(backup={"path": "backups/channel.backup", "keep": 3})
    path = daemon.config.state_dir / "backups" / "channel.backup"
    wait_for(path.exists, timeout=20) if path.exists() else None
    peers = simnet.control.state()["peers"]
    inodes: list[int] = []
    contents: list[bytes] = []
    for n in range(3):
        previous = os.stat(path).st_ino if path.exists() else None
        simnet.control.open_channel(peers[n]["pubkey"], 500_000 + n, confirm=True)
        wait_for(lambda p=previous: path.exists() and os.stat(path).st_ino != p, timeout=20)
        time.sleep(0.2)
        inodes.append(os.stat(path).st_ino)
        contents.append(path.read_bytes())
    assert len(set(inodes)) == 3 and len(set(contents)) == 3
    assert (path.parent / "channel.backup.1").exists() and (path.parent / "channel.backup.2").exists()
    assert not (path.parent / "channel.backup.3").exists()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    info = api.ok("GET", "/v1/rebalance/backup", role="readonly")
    assert info["path"] == str(path) and info["last_backup_time"] > 0
    health = api.ok("GET", "/v1/health", role="readonly")
    assert health["checks"]["rebalancer"]["last_backup_time"] == info["last_backup_time"]
    text = api.metrics_text(daemon.metrics_url)
    assert _metric(text, "lightningd_rebalancer_last_backup_timestamp_seconds") == info["last_backup_time"]


def test_routing_volume_from_forward_events_weighs_priority(simnet, start_rebalancer) -> None:
    _, api = start_rebalancer()
    ids = sorted(channels(simnet))
    a, b, c = ids[0], ids[1], ids[2]
    set_ratios(simnet, {a: 0.1, b: 0.1, c: 0.6, **dict.fromkeys(ids[3:], 0.5)})
    for _ in range(3):
        simnet.control.forward(c, a, 20_000_000, 2_000)
    set_ratios(simnet, {a: 0.1, b: 0.1})

    def advice() -> dict[int, Any]:
        return {
            x["chan_id"]: x
            for x in api.ok("GET", "/v1/rebalance/recommendations", role="readonly")["channels"]
        }

    wait_for(lambda: advice()[a]["volume_msat"] == 60_000_000, timeout=10, interval=0.1)
    now = advice()
    assert now[c]["volume_msat"] == 60_006_000
    # Equally depleted, but the one that routes ranks higher.
    assert now[a]["priority"] > now[b]["priority"]


def test_lifecycle_recommends_and_executes_only_when_enabled(simnet, start_rebalancer) -> None:
    ids = sorted(channels(simnet))
    gone = channels(simnet)[ids[-1]]["peer"]
    simnet.control.close_channel(ids[-1], remote=True, confirm=True)
    _, api = start_rebalancer(
        lifecycle={
            "inactive_days": 0.00001,
            "idle_days": 1000,
            "candidates": [gone],
            "channel_size_sat": 1_000_000,
        }
    )
    simnet.control.set_channel_active(ids[0], False)

    def actions() -> list[dict[str, Any]]:
        return api.ok("GET", "/v1/rebalance/lifecycle", role="readonly")["actions"]

    wait_for(lambda: any(x["action"] == "close" for x in actions()), timeout=10, interval=0.1)
    found = actions()
    close = next(x for x in found if x["action"] == "close")
    opening = next(x for x in found if x["action"] == "open")
    assert close["chan_id"] == ids[0] and close["reason"].startswith("inactive for")
    assert opening["target"] == gone and opening["amount_sat"] == 1_000_000

    status, error = api.call("POST", "/v1/rebalance/lifecycle/execute", {"action": "open", "target": gone})
    assert status == 409 and error["error"]["code"] == "lifecycle_disabled"
    api.ok("PUT", "/v1/rebalance/config", {"lifecycle": {"enabled": True}})
    status, error = api.call(
        "POST",
        "/v1/rebalance/lifecycle/execute",
        {"action": "close", "target": channels(simnet)[ids[1]]["channel_point"]},
    )
    assert status == 409 and error["error"]["code"] == "not_recommended"

    done = api.ok("POST", "/v1/rebalance/lifecycle/execute", {"action": "open", "target": gone})
    assert done["result"] == "done" and done["detail"].startswith("channel point ")
    state = simnet.control.state()["channel_list"]
    assert any(c["peer"] == gone and c["status"] in ("pending_open", "open") for c in state)
    done = api.ok("POST", "/v1/rebalance/lifecycle/execute", {"action": "close", "target": close["target"]})
    assert done["detail"].startswith("closing txid ")
    state = {int(c["chan_id"]): c for c in simnet.control.state()["channel_list"]}
    assert state[ids[0]]["status"] != "open"


def test_sighup_reload_applies_the_new_table(simnet, start_rebalancer) -> None:
    daemon, api = start_rebalancer(max_fee_ppm=100)
    text = daemon.config.path.read_text().replace("max_fee_ppm = 100", "max_fee_ppm = 321")
    assert "max_fee_ppm = 321" in text
    daemon.config.path.write_text(text)
    daemon.signal(signal.SIGHUP)
    wait_for(
        lambda: api.ok("GET", "/v1/rebalance/config", role="readonly")["max_fee_ppm"] == 321,
        timeout=10,
        interval=0.1,
    )


def test_unwritable_backup_path_makes_health_fail(simnet, start_rebalancer, tmp_path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the backup directory should be")
    _, api = start_rebalancer(backup={"path": str(blocked / "channel.backup")})

    def check() -> dict[str, Any]:
        return api.call("GET", "/v1/health", role="readonly")[1]["checks"]["rebalancer"]

    wait_for(lambda: check()["backup_error"] is not None, timeout=10, interval=0.1)
    assert check()["ok"] is False and str(blocked) in check()["backup_error"]
