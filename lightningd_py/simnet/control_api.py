"""simnet's control API: JSON over HTTP on 127.0.0.1, for tests, the demo and benchmarks.

It does what the outside world does to an LND node: pays its invoices, opens and closes
channels, forwards HTLCs through it, mines blocks, locks and restarts it. Errors are JSON
{"error": message} with status 400 (bad input) or 404 (unknown invoice/channel/peer).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web

from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.lnd.rpc import router_pb2 as rt
from lightningd_py.simnet import bolt11
from lightningd_py.simnet.channels import ChannelError
from lightningd_py.simnet.grpc_server import unary_methods
from lightningd_py.simnet.invoices import InvoiceError
from lightningd_py.simnet.node import SimChannel

if TYPE_CHECKING:
    from lightningd_py.simnet.server import Simnet

__all__ = ["ROUTES", "ControlServer"]

# Writing one message to a stream subscriber takes a few event-loop iterations, and adding an
# invoice (signing its payment request) takes about as long as writing a few messages. While
# the additions of a burst are streamed, it yields this often per invoice, so the invoice stream
# keeps pace with them as LND's notifier does; yielding once every few hundred invoices starved
# it (a subscriber got about ten messages a second while 5,000 invoices a second were added).
# Settling is cheap: its updates queue up for the fraction of a second the loop takes, and then
# go out at the stream's full speed.
_YIELDS_PER_ADD = 3


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _int(body: dict[str, Any], key: str, default: int | None = None, minimum: int = 0) -> int:
    value = body.get(key, default)
    if value is None:
        raise BadRequest(f"{key}: required integer")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadRequest(f"{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def _num(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise BadRequest(f"{key}: expected a number >= 0, got {value!r}")
    return float(value)


def _hex32(body: dict[str, Any], key: str) -> bytes:
    value = body.get(key)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise BadRequest(f"{key}: expected 64 hex characters")
    return raw


class ControlServer:
    def __init__(self, sim: Simnet) -> None:
        self.sim = sim
        self.node = sim.node
        self._runner: web.AppRunner | None = None

    async def start(self, port: int) -> int:
        app = web.Application(middlewares=[self._errors])
        for method, path, name, _doc in ROUTES:
            app.router.add_route(method, path, getattr(self, name))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        return int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        except InvoiceError as exc:
            return web.json_response({"error": str(exc)}, status=404 if exc.not_found else 400)
        except (ChannelError, RuntimeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("body: expected a JSON object") from None
        if not isinstance(body, dict):
            raise BadRequest("body: expected a JSON object")
        return body

    def _channel(self, body: dict[str, Any], key: str) -> SimChannel:
        ref = body.get(key)
        if isinstance(ref, int) and not isinstance(ref, bool):
            ref = str(ref)
        if not isinstance(ref, str):
            raise BadRequest(f"{key}: expected a chan_id or a channel point 'txid:index'")
        chan = self.node.find_channel(ref)
        if chan is None:
            raise BadRequest(f"{key}: no channel {ref}", status=404)
        return chan

    def _peer(self, body: dict[str, Any], key: str = "peer") -> str:
        ref = body.get(key)
        if not isinstance(ref, str):
            raise BadRequest(f"{key}: expected a peer pubkey or alias")
        if ref in self.node.peers:
            return ref
        for p in self.node.peers.values():
            if p.alias == ref:
                return p.pubkey
        raise BadRequest(f"{key}: no peer {ref}", status=404)

    # ---- state ----------------------------------------------------------------------
    async def get_state(self, request: web.Request) -> web.Response:
        summary = self.node.summary()
        subscribers = cast(dict[str, int], summary["subscribers"])
        subscribers["payments"] = len(self.sim.payments.updates)
        summary["held_calls"] = self.sim.holds.summary()
        summary["info"] = self.sim.info()
        summary["channel_list"] = [
            {
                "chan_id": str(c.chan_id),
                "channel_point": c.channel_point,
                "peer": c.remote_pubkey,
                "status": c.status,
                "active": c.active,
                "capacity_sat": c.capacity_sat,
                "local_msat": c.local_msat,
                "remote_msat": c.remote_msat,
            }
            for c in self.node.channels.values()
        ]
        return web.json_response(summary)

    # ---- invoices -------------------------------------------------------------------
    async def add_invoice(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        rec = self.node.invoices.add(
            value_msat=_int(body, "value_msat", 0),
            memo=str(body.get("memo", "")),
            expiry=_int(body, "expiry", 0),
        )
        return web.json_response(
            {
                "payment_hash": rec.r_hash.hex(),
                "payment_request": rec.payment_request,
                "add_index": rec.add_index,
            }
        )

    async def settle_invoice(self, request: web.Request) -> web.Response:
        """Pay one of our invoices from outside: settles it (or accepts it, for a hold invoice)."""
        body = await self._body(request)
        r_hash = _hex32(body, "payment_hash")
        rec = self.node.invoices.lookup(r_hash)
        amt = _int(body, "amt_msat", 0) or rec.value_msat
        chan = self._inbound(body, amt)
        self.node.invoices.pay(r_hash, amt, chan_id=chan.chan_id if chan else 0)
        if chan is not None and rec.state == ln.Invoice.SETTLED:
            self._received(chan, rec.r_preimage)
            chan.remote_msat -= amt
            chan.local_msat += amt
            chan.received_msat += amt
        elif chan is not None:
            # A hold invoice: the HTLC's amount moves only if SettleInvoice comes.
            self.node.held_htlcs[r_hash] = (chan.chan_id, amt)
        return web.json_response(
            {
                "payment_hash": r_hash.hex(),
                "state": ln.Invoice.InvoiceState.Name(rec.state),
                "settle_index": rec.settle_index,
                "amt_paid_msat": rec.amt_paid_msat,
                "chan_id": str(chan.chan_id) if chan else "0",
            }
        )

    async def delete_invoice(self, request: web.Request) -> web.Response:
        """Delete a canceled invoice, as ``lncli deletecanceledinvoice`` does."""
        body = await self._body(request)
        rec = self.node.invoices.delete_canceled(_hex32(body, "payment_hash"))
        return web.json_response({"payment_hash": rec.r_hash.hex(), "add_index": rec.add_index})

    def _received(self, chan: SimChannel, preimage: bytes) -> None:
        """HTLC events of a payment received over `chan` (settle, then final resolution)."""
        htlc_id = chan.next_htlc_id()
        self.sim.htlcs.event(rt.HtlcEvent.RECEIVE, in_chan=chan.chan_id, in_htlc=htlc_id, preimage=preimage)
        self.sim.htlcs.final(chan.chan_id, htlc_id)

    def _inbound(self, body: dict[str, Any], amt: int) -> SimChannel | None:
        if "chan_id" in body:
            chan = self._channel(body, "chan_id")
            if chan.remote_msat < amt:
                raise BadRequest(f"chan_id: channel {chan.chan_id} has only {chan.remote_msat} msat inbound")
            return chan
        best = max(
            (c for c in self.node.channels.values() if c.status == "open" and c.active),
            key=lambda c: c.remote_msat,
            default=None,
        )
        return best if best is not None and best.remote_msat >= amt else None

    async def burst_settle(self, request: web.Request) -> web.Response:
        """Create `count` invoices, then settle them all as fast as possible.

        The adds are streamed to subscribers (as LND does) unless notify_adds is false, which
        stands for invoices created before anyone subscribed. With wait_delivery the answer
        comes once every subscriber has taken every update (bounded by 120 s).
        """
        body = await self._body(request)
        count = _int(body, "count", minimum=1)
        value = _int(body, "value_msat", 1000, minimum=1)
        memo = str(body.get("memo", "burst"))
        notify_adds = bool(body.get("notify_adds", True))
        reg = self.node.invoices
        started = time.perf_counter()
        recs = []
        for i in range(count):
            recs.append(reg.add(value_msat=value, memo=memo, notify=notify_adds))
            if notify_adds and len(reg.stream):
                for _ in range(_YIELDS_PER_ADD):
                    await asyncio.sleep(0)
            elif i % 256 == 255:
                await asyncio.sleep(0)
        created = time.perf_counter()
        chan = self._inbound({}, value * count)
        for i, rec in enumerate(recs):
            reg.pay(rec.r_hash, value, chan_id=chan.chan_id if chan else 0)
            if chan is not None:
                self._received(chan, rec.r_preimage)
            if i % 512 == 511:
                await asyncio.sleep(0)
        if chan is not None:
            chan.remote_msat -= value * count
            chan.local_msat += value * count
            chan.received_msat += value * count
        settled = time.perf_counter()
        answer: dict[str, Any] = {
            "count": count,
            "first_add_index": recs[0].add_index,
            "last_add_index": recs[-1].add_index,
            "first_settle_index": recs[0].settle_index,
            "last_settle_index": recs[-1].settle_index,
            "create_seconds": round(created - started, 6),
            "settle_seconds": round(settled - created, 6),
            "settle_rate": round(count / max(settled - created, 1e-9)),
        }
        if body.get("wait_delivery", False):
            answer["delivered"] = await reg.stream.wait_drained(120)
            answer["deliver_seconds"] = round(time.perf_counter() - created, 6)
        return web.json_response(answer)

    async def external_invoice(self, request: web.Request) -> web.Response:
        """An invoice issued by a peer (or by a node behind it) that our node can pay."""
        body = await self._body(request)
        pubkey = self._peer(body)
        peer = self.node.peers[pubkey]
        preimage = secrets.token_bytes(32)
        r_hash = hashlib.sha256(preimage).digest()
        pr = bolt11.encode(
            key=peer.key,
            network="bcrt",
            amount_msat=_int(body, "value_msat", 0),
            timestamp=int(time.time()),
            payment_hash=r_hash,
            payment_secret=secrets.token_bytes(32),
            description=str(body.get("memo", "")),
            expiry=_int(body, "expiry", 3600),
        )
        self.sim.payments.external_preimages[r_hash] = preimage
        return web.json_response(
            {"payment_request": pr, "payment_hash": r_hash.hex(), "preimage": preimage.hex(), "payee": pubkey}
        )

    # ---- channels, peers, chain -----------------------------------------------------------
    async def open_channel(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        chan = self.sim.channels.open(
            self._peer(body),
            _int(body, "local_sat"),
            _int(body, "push_sat", 0),
            bool(body.get("private", False)),
        )
        if body.get("confirm", False):
            self.sim.channels.mine(self.sim.channels.blocks_until_confirmed(chan.chan_id))
        else:
            self.sim.schedule_confirmations()
        return web.json_response(
            {"channel_point": chan.channel_point, "chan_id": str(chan.chan_id), "status": chan.status}
        )

    async def close_channel(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        chan = self._channel(body, "channel")
        if body.get("remote", False):
            self.sim.channels.remote_force_close(chan)
        else:
            self.sim.channels.close(chan, force=bool(body.get("force", False)))
        if body.get("confirm", False):
            self.sim.channels.mine(1)
        else:
            self.sim.schedule_confirmations()
        return web.json_response({"closing_txid": chan.closing_txid[::-1].hex(), "status": chan.status})

    async def set_balance(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        chan = self._channel(body, "channel")
        local = _int(body, "local_msat")
        if local > chan.capacity_sat * 1000:
            raise BadRequest(f"local_msat: above the channel capacity {chan.capacity_sat * 1000}")
        chan.local_msat = local
        chan.remote_msat = chan.capacity_sat * 1000 - local
        return web.json_response(
            {"chan_id": str(chan.chan_id), "local_msat": chan.local_msat, "remote_msat": chan.remote_msat}
        )

    async def set_channel_active(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        chan = self._channel(body, "channel")
        self.sim.channels.set_active(chan, bool(body.get("active", True)))
        return web.json_response({"chan_id": str(chan.chan_id), "active": chan.active})

    async def set_peer_online(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        pubkey = self._peer(body)
        self.sim.channels.set_peer_online(pubkey, bool(body.get("online", True)))
        return web.json_response({"peer": pubkey, "online": self.node.peers[pubkey].online})

    async def add_peer(self, request: web.Request) -> web.Response:
        """A new peer connects to us (PEER_ONLINE); it can then get channels and issue invoices."""
        body = await self._body(request)
        alias = body.get("alias")
        if not isinstance(alias, str) or not alias or len(alias) > 32:
            raise BadRequest("alias: expected a name of 1-32 characters")
        if any(p.alias == alias for p in self.node.peers.values()):
            raise BadRequest(f"alias: a peer named {alias!r} exists")
        peer = self.node.add_peer(alias)
        self.node.peer_events.publish(ln.PeerEvent(pub_key=peer.pubkey, type=ln.PeerEvent.PEER_ONLINE))
        return web.json_response({"pubkey": peer.pubkey, "alias": peer.alias, "address": peer.address})

    async def set_wallet(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        node = self.node
        node.wallet_confirmed_sat = _int(body, "confirmed_sat", node.wallet_confirmed_sat)
        node.wallet_unconfirmed_sat = _int(body, "unconfirmed_sat", node.wallet_unconfirmed_sat)
        node.fee_sat_per_vbyte = _int(body, "sat_per_vbyte", node.fee_sat_per_vbyte, minimum=1)
        return web.json_response(
            {
                "confirmed_sat": node.wallet_confirmed_sat,
                "unconfirmed_sat": node.wallet_unconfirmed_sat,
                "sat_per_vbyte": node.fee_sat_per_vbyte,
            }
        )

    async def forward(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        rec = self.sim.htlcs.forward(
            self._channel(body, "in_chan"),
            self._channel(body, "out_chan"),
            _int(body, "amt_msat", minimum=1),
            _int(body, "fee_msat", 0),
            fail=bool(body.get("fail", False)),
        )
        if rec is None:
            return web.json_response({"settled": False})
        return web.json_response(
            {
                "settled": True,
                "timestamp_ns": rec.timestamp_ns,
                "amt_in_msat": rec.amt_in_msat,
                "amt_out_msat": rec.amt_out_msat,
            }
        )

    async def fail_next_payment(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        name = str(body.get("reason", "FAILURE_REASON_NO_ROUTE")).upper()
        if not name.startswith("FAILURE_REASON_"):
            name = "FAILURE_REASON_" + name
        try:
            reason = ln.PaymentFailureReason.Value(name)
        except ValueError:
            raise BadRequest(f"reason: unknown failure reason {body.get('reason')!r}") from None
        if reason == ln.FAILURE_REASON_NONE:
            raise BadRequest("reason: NONE is not a failure")
        self.sim.payments.fail_next.append(reason)
        return web.json_response({"queued": len(self.sim.payments.fail_next), "reason": name})

    async def mine(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        height = self.sim.channels.mine(_int(body, "blocks", 1, minimum=1))
        return web.json_response({"block_height": height})

    async def lock(self, request: web.Request) -> web.Response:
        self.sim.lock()
        return web.json_response({"state": "LOCKED"})

    async def unlock(self, request: web.Request) -> web.Response:
        await self.sim.unlock()
        return web.json_response({"state": "SERVER_ACTIVE"})

    async def hold_calls(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        method = self._unary_method(body)
        self.sim.holds.hold(method, _int(body, "after", 0))
        return web.json_response({"held": self.sim.holds.summary()})

    async def release_calls(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        released = self.sim.holds.release(self._unary_method(body))
        return web.json_response({"released": released, "held": self.sim.holds.summary()})

    def _unary_method(self, body: dict[str, Any]) -> str:
        method = body.get("method")
        known = unary_methods()
        if not isinstance(method, str) or method not in known:
            raise BadRequest(
                f"method: expected the name of a unary RPC such as 'ListInvoices', got {method!r}"
            )
        return method

    async def restart(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        down = _num(body, "down_seconds", 1.0)
        if self.sim.restarting:
            raise BadRequest("a restart is already in progress", status=409)
        task = self.sim.spawn(
            self.sim.restart(down, bool(body.get("regenerate_tls", False)), bool(body.get("locked", False)))
        )
        if body.get("wait", False):
            await task
        return web.json_response({"restarting": not task.done(), "grpc": self.sim.info()["grpc"]})


ROUTES: tuple[tuple[str, str, str, str], ...] = (
    ("GET", "/state", "get_state", "node summary, channel list and connection info"),
    ("POST", "/invoices", "add_invoice", "{value_msat, memo, expiry} -> add an invoice"),
    (
        "POST",
        "/invoices/settle",
        "settle_invoice",
        "{payment_hash, amt_msat?, chan_id?} -> pay it from outside",
    ),
    ("POST", "/invoices/delete", "delete_invoice", "{payment_hash} -> a canceled invoice is deleted"),
    (
        "POST",
        "/invoices/burst",
        "burst_settle",
        "{count, value_msat?, memo?, notify_adds?, wait_delivery?}",
    ),
    (
        "POST",
        "/external-invoice",
        "external_invoice",
        "{peer, value_msat, memo?, expiry?} -> a peer's invoice",
    ),
    ("POST", "/channels/open", "open_channel", "{peer, local_sat, push_sat?, private?, confirm?}"),
    ("POST", "/channels/close", "close_channel", "{channel, force?, remote?, confirm?}"),
    ("POST", "/channels/balance", "set_balance", "{channel, local_msat}"),
    ("POST", "/channels/active", "set_channel_active", "{channel, active}"),
    ("POST", "/peers/online", "set_peer_online", "{peer, online}"),
    ("POST", "/peers", "add_peer", "{alias} -> a new connected peer"),
    ("POST", "/wallet", "set_wallet", "{confirmed_sat?, unconfirmed_sat?, sat_per_vbyte?}"),
    ("POST", "/forwards", "forward", "{in_chan, out_chan, amt_msat, fee_msat?, fail?}"),
    ("POST", "/payments/fail-next", "fail_next_payment", "{reason} -> the next payment fails with it"),
    ("POST", "/mine", "mine", "{blocks}"),
    ("POST", "/lock", "lock", "wallet locked (streams end)"),
    ("POST", "/unlock", "unlock", "walk LOCKED -> SERVER_ACTIVE"),
    ("POST", "/restart", "restart", "{down_seconds?, regenerate_tls?, locked?, wait?}"),
    ("POST", "/calls/hold", "hold_calls", "{method, after?} -> its calls after the first `after` wait"),
    ("POST", "/calls/release", "release_calls", "{method} -> held calls go on"),
)
