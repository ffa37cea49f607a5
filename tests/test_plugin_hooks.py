"""Every hook of the contract, called by a real daemon on a third-party plugin.

The probe plugin (tests/plugins/fake/probe) is found the way an installed package is:
through its ``*.dist-info/entry_points.txt`` on the daemon's PYTHONPATH. It records
each call; the test drives simnet, the HTTP API, metrics, a webhook receiver, SIGHUP and
SIGTERM so that the daemon calls every hook at least once.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lightningd_py import hookspecs
from lightningd_py.cli import new_webhook_secret

PROBE_SITE = Path(__file__).parent / "plugins" / "fake" / "probe"
HOOKS = sorted(name for name in vars(hookspecs) if name.startswith("ldp_"))


def site_env(*sites: Path) -> dict[str, str]:
    """PYTHONPATH that installs the fake plugins in ``sites`` for a daemon process."""
    paths = [str(s) for s in sites]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {"PYTHONPATH": os.pathsep.join(paths)}


def api_call(url: str, token: str, method: str = "GET", body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


class Receiver:
    """A webhook receiver keeping every JSON body it was sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def calls(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines() if line]


def called(record: Path, hook: str, **match: Any) -> list[dict[str, Any]]:
    return [c for c in calls(record) if c["hook"] == hook and all(c.get(k) == v for k, v in match.items())]


def test_every_hook_is_called_on_a_third_party_plugin(
    simnet, ldp_config_factory, ldp_daemon_factory, receiver, tmp_path: Path
) -> None:
    record, bulk = tmp_path / "calls.jsonl", tmp_path / "bulk.jsonl"
    config = ldp_config_factory(
        plugins={
            "probe": {"record": str(record)},
            "probe_bulk": {"record": str(bulk)},
            "webhooks": {
                "endpoints": [
                    {
                        "name": "probe",
                        "url": receiver.url,
                        "events": ["payment.confirmed"],
                        "secret": new_webhook_secret(),
                    }
                ]
            },
        }
    )
    daemon = ldp_daemon_factory(config, env=site_env(PROBE_SITE))
    daemon.wait_for(lambda: "STATUS=LND active" in daemon.notifications, timeout=15)
    api, tokens = config.api_url, config.tokens
    # Every stream subscribed and caught up (peer events made before that are not
    # replayed by LND), which the webhooks plugin reports as live.
    daemon.wait_for(
        lambda: api_call(f"{api}/v1/health", tokens["readonly"])["checks"]["webhooks"]["live"], timeout=15
    )

    # Lifecycle: schema (its model became daemon.settings), journal start, startup,
    # services, routes and metrics registered before READY.
    assert called(record, "ldp_startup", settings="ProbeSettings")
    for hook in ("ldp_journal_start", "ldp_register_routes", "ldp_register_metrics"):
        assert len(called(record, hook)) == 1, hook
    daemon.wait_for(lambda: called(record, "ldp_background_tasks", service="idle"))

    # Events from LND, one of each kind.
    state = simnet.control.state()
    alice = state["peers"][0]["pubkey"]
    first, second = state["channel_list"][0]["chan_id"], state["channel_list"][1]["chan_id"]
    invoice = simnet.control.add_invoice(21_000, memo="probe")
    simnet.control.settle_invoice(invoice["payment_hash"])
    simnet.control.forward(first, second, 50_000, fee_msat=5)
    simnet.control.set_channel_active(second, False)
    simnet.control.set_peer_online(alice, False)
    outgoing = simnet.control.external_invoice(alice, 3_000)
    paid = api_call(
        f"{api}/v1/payments",
        tokens["admin"],
        "POST",
        {"payment_request": outgoing["payment_request"], "fee_limit_msat": 1_000},
    )
    assert paid["status"] == "succeeded"

    expected = {
        "ldp_invoice_event": "invoice.settled",
        "ldp_payment_event": "payment.succeeded",
        "ldp_forward_event": "forward.settled",
        "ldp_channel_event": "channel.inactive",
        "ldp_peer_event": "peer.offline",
        "ldp_node_state": "node.state",
        "ldp_backup_event": "backup.updated",
        # The probe emits a CustomEvent when it sees a settlement; it comes back to it.
        "ldp_event": "custom",
    }
    for hook, kind in expected.items():
        daemon.wait_for(lambda hook=hook, kind=kind: called(record, hook, type=kind), timeout=20)
    assert called(record, "ldp_event_detail", type="custom", source="probe", name="probe.settled_seen")
    # The companion got the same events through ldp_event_batch, each once, in journal order.
    daemon.wait_for(
        lambda: (
            {"invoice.settled", "custom", "backup.updated"}
            <= {t for c in called(bulk, "ldp_event_batch") for t in c["types"]}
        ),
        timeout=20,
    )
    ids = [i for c in called(bulk, "ldp_event_batch") for i in c["ids"]]
    assert ids == sorted(set(ids))
    seen = api_call(f"{api}/v1/probe/events", tokens["readonly"])["events"]
    # The API knows which plugin a route came from.
    openapi = api_call(f"{api}/v1/openapi.json", tokens["readonly"])
    assert openapi["paths"]["/v1/probe/events"]["get"]["tags"] == ["probe"]
    assert seen["invoice.settled"] == 1 and seen["custom"] == 1  # one delivery per event

    # Decisions: the exchange rate and the webhook payload come from the probe.
    created = api_call(
        f"{api}/v1/invoices", tokens["invoice"], "POST", {"fiat_amount": "4", "fiat_currency": "EUR"}
    )
    assert created["amount_msat"] == 10_000_000  # 4 EUR at 40,000 EUR/BTC
    assert called(record, "ldp_exchange_rate", currency="EUR")
    # Webhooks push only what happens after the daemon first caught up with LND (long
    # done by now): a new settlement.
    pushed = simnet.control.add_invoice(22_000, memo="pushed")
    simnet.control.settle_invoice(pushed["payment_hash"])
    expected_data = {"probe": True, "payment_hash": pushed["payment_hash"]}
    daemon.wait_for(lambda: any(b.get("data") == expected_data for b in receiver.bodies), timeout=20)
    assert called(record, "ldp_webhook_payload", type="invoice.settled")

    # Health and metrics contributions.
    health = api_call(f"{api}/v1/health", tokens["readonly"])
    assert health["checks"]["probe"] == {"ok": True, "probe": "alive"}
    with urllib.request.urlopen(config.metrics_url, timeout=10) as resp:
        assert "probe_started_total 1.0" in resp.read().decode()

    # Reload: the new settings are visible inside ldp_config_reloaded.
    text = config.path.read_text()
    config.path.write_text(text.replace(f'record = "{record}"', f'record = "{record}"\nlabel = "second"'))
    daemon.signal(signal.SIGHUP)
    daemon.wait_for(lambda: called(record, "ldp_config_reloaded", label="second"), timeout=15)

    assert daemon.stop() == 0
    assert called(record, "ldp_shutdown")
    with sqlite3.connect(config.state_dir / "lightningd-py.sqlite") as conn:
        versions = dict(conn.execute("SELECT owner, version FROM schema_versions").fetchall())
    assert versions["probe"] == 1  # ldp_migrations ran

    recorded = {c["hook"] for c in calls(record) + calls(bulk)}
    # ldp_config_schema, ldp_migrations and ldp_health are checked through their effects above.
    assert set(HOOKS) - recorded == {"ldp_config_schema", "ldp_migrations", "ldp_health"}
