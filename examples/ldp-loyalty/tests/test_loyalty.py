"""ldp-loyalty against a simulated LND node, with the fixtures lightningd-py ships for
plugin authors (``simnet``, ``ldp_config_factory``, ``ldp_daemon_factory``): the daemon
runs as a real process with this plugin installed, exactly as in production."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest


def get(daemon: Any, path: str, role: str = "readonly") -> tuple[int, Any]:
    request = urllib.request.Request(daemon.api_url + path)
    request.add_header("Authorization", f"Bearer {daemon.tokens[role]}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def points(daemon: Any, customer: str) -> int:
    status, body = get(daemon, f"/v1/loyalty/customers/{customer}")
    return body["points"] if status == 200 else 0


def pay(simnet: Any, amount_msat: int, memo: str) -> str:
    """An invoice of the node, paid by a peer; its payment hash."""
    invoice = simnet.control.add_invoice(amount_msat, memo=memo)
    simnet.control.settle_invoice(invoice["payment_hash"])
    return str(invoice["payment_hash"])


def test_settled_invoices_earn_points(simnet, ldp_daemon_factory) -> None:
    daemon = ldp_daemon_factory(plugins={"loyalty": {"msat_per_point": 2_000, "min_amount_msat": 10_000}})
    pay(simnet, 50_000, "order 17 customer:alice")
    pay(simnet, 8_000, "tip customer:alice")  # below min_amount_msat
    pay(simnet, 30_000, "no customer in this memo")
    pay(simnet, 20_000, "customer:alice again")
    daemon.wait_for(lambda: points(daemon, "alice") == 35, timeout=15)

    status, body = get(daemon, "/v1/loyalty/customers/alice")
    assert (status, body) == (200, {"customer": "alice", "points": 35, "payments": 2, "paid_msat": 70_000})
    status, body = get(daemon, "/v1/loyalty/customers/bob")
    assert status == 404
    assert body["error"]["code"] == "unknown_customer" and body["error"]["field"] == "customer"
    # The route has the API's authentication.
    request = urllib.request.Request(daemon.api_url + "/v1/loyalty/customers/alice")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 401


def test_payments_while_the_daemon_is_down_count_once(simnet, ldp_daemon_factory) -> None:
    daemon = ldp_daemon_factory()
    pay(simnet, 5_000, "customer:carol")
    daemon.wait_for(lambda: points(daemon, "carol") == 5, timeout=15)
    assert daemon.stop() == 0

    pay(simnet, 7_000, "customer:carol")  # paid while the daemon is stopped
    daemon.start()
    daemon.wait_for(lambda: points(daemon, "carol") == 12, timeout=15)
    assert get(daemon, "/v1/loyalty/customers/carol")[1]["payments"] == 2


def test_awards_are_announced_to_other_plugins(simnet, ldp_daemon_factory) -> None:
    daemon = ldp_daemon_factory()
    payment_hash = pay(simnet, 3_000, "customer:dave")
    daemon.wait_for(lambda: points(daemon, "dave") == 3, timeout=15)
    # Every plugin sees the CustomEvent; the HTTP API's event stream shows it too.
    with urllib.request.urlopen(
        urllib.request.Request(
            daemon.api_url + "/v1/events?types=custom&last_event_id=0",
            headers={"Authorization": f"Bearer {daemon.tokens['readonly']}", "Accept": "text/event-stream"},
        ),
        timeout=10,
    ) as stream:
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("data:"):
                event = json.loads(line[5:])
                break
    assert event["name"] == "loyalty.points_awarded" and event["source"] == "loyalty"
    assert event["data"] == {"customer": "dave", "points": 3, "payment_hash": payment_hash}


def test_a_bad_setting_stops_the_daemon_naming_the_key(ldp_config_factory, ldp_daemon_factory) -> None:
    config = ldp_config_factory(plugins={"loyalty": {"customer_pattern": "customer:\\w+"}})
    with pytest.raises(RuntimeError, match="exited with 2") as info:
        ldp_daemon_factory(config, timeout=15)
    assert "plugins.loyalty.customer_pattern" in str(info.value)
    assert "needs a capture group" in str(info.value)


def test_listed_as_an_installed_plugin(ldp_config_factory) -> None:
    config = ldp_config_factory()
    listing = subprocess.run(
        [sys.executable, "-m", "lightningd_py.cli", "plugins", "--config", str(config.path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    row = next(r for r in json.loads(listing.stdout) if r["name"] == "loyalty")
    assert (row["origin"], row["version"], row["enabled"]) == ("ldp-loyalty", "0.1.0", True)
    assert {"ldp_invoice_event", "ldp_register_routes", "ldp_migrations"} <= set(row["hooks"])
