"""Clients for simnet's control API: `SimnetControl` (blocking) and `AsyncSimnetControl`.

Both expose the same methods; errors raise `SimnetControlError(status, message)`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import aiohttp

__all__ = ["AsyncSimnetControl", "SimnetControl", "SimnetControlError"]


class SimnetControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"simnet control: {status} {message}")
        self.status = status
        self.message = message


def _body(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


class _Calls:
    """The control API's operations; subclasses supply `_call(method, path, body)`."""

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        raise NotImplementedError

    def state(self) -> Any:
        return self._call("GET", "/state")

    def add_invoice(self, value_msat: int = 0, memo: str = "", expiry: int = 0) -> Any:
        return self._call("POST", "/invoices", _body(value_msat=value_msat, memo=memo, expiry=expiry))

    def delete_invoice(self, payment_hash: str | bytes) -> Any:
        h = payment_hash.hex() if isinstance(payment_hash, bytes) else payment_hash
        return self._call("POST", "/invoices/delete", _body(payment_hash=h))

    def settle_invoice(
        self, payment_hash: str | bytes, amt_msat: int | None = None, chan_id: int | str | None = None
    ) -> Any:
        h = payment_hash.hex() if isinstance(payment_hash, bytes) else payment_hash
        return self._call(
            "POST", "/invoices/settle", _body(payment_hash=h, amt_msat=amt_msat, chan_id=chan_id)
        )

    def burst_settle(
        self, count: int, value_msat: int = 1000, memo: str = "burst", notify_adds: bool = True
    ) -> Any:
        body = _body(count=count, value_msat=value_msat, memo=memo, notify_adds=notify_adds)
        return self._call("POST", "/invoices/burst", body)

    def external_invoice(self, peer: str, value_msat: int, memo: str = "", expiry: int = 3600) -> Any:
        return self._call(
            "POST", "/external-invoice", _body(peer=peer, value_msat=value_msat, memo=memo, expiry=expiry)
        )

    def open_channel(
        self, peer: str, local_sat: int, push_sat: int = 0, private: bool = False, confirm: bool = False
    ) -> Any:
        return self._call(
            "POST",
            "/channels/open",
            _body(peer=peer, local_sat=local_sat, push_sat=push_sat, private=private, confirm=confirm),
        )

    def close_channel(
        self, channel: int | str, force: bool = False, remote: bool = False, confirm: bool = False
    ) -> Any:
        return self._call(
            "POST",
            "/channels/close",
            _body(channel=str(channel), force=force, remote=remote, confirm=confirm),
        )

    def set_balance(self, channel: int | str, local_msat: int) -> Any:
        return self._call("POST", "/channels/balance", _body(channel=str(channel), local_msat=local_msat))

    def set_channel_active(self, channel: int | str, active: bool) -> Any:
        return self._call("POST", "/channels/active", _body(channel=str(channel), active=active))

    def set_peer_online(self, peer: str, online: bool) -> Any:
        return self._call("POST", "/peers/online", _body(peer=peer, online=online))

    def add_peer(self, alias: str) -> Any:
        return self._call("POST", "/peers", _body(alias=alias))

    def set_wallet(
        self,
        confirmed_sat: int | None = None,
        unconfirmed_sat: int | None = None,
        sat_per_vbyte: int | None = None,
    ) -> Any:
        body = _body(
            confirmed_sat=confirmed_sat, unconfirmed_sat=unconfirmed_sat, sat_per_vbyte=sat_per_vbyte
        )
        return self._call("POST", "/wallet", body)

    def forward(
        self, in_chan: int | str, out_chan: int | str, amt_msat: int, fee_msat: int = 0, fail: bool = False
    ) -> Any:
        return self._call(
            "POST",
            "/forwards",
            _body(
                in_chan=str(in_chan), out_chan=str(out_chan), amt_msat=amt_msat, fee_msat=fee_msat, fail=fail
            ),
        )

    def fail_next_payment(self, reason: str = "FAILURE_REASON_NO_ROUTE") -> Any:
        return self._call("POST", "/payments/fail-next", _body(reason=reason))

    def mine(self, blocks: int = 1) -> Any:
        return self._call("POST", "/mine", _body(blocks=blocks))

    def lock(self) -> Any:
        return self._call("POST", "/lock")

    def unlock(self) -> Any:
        return self._call("POST", "/unlock")

    def restart(
        self,
        down_seconds: float = 1.0,
        regenerate_tls: bool = False,
        locked: bool = False,
        wait: bool = False,
    ) -> Any:
        return self._call(
            "POST",
            "/restart",
            _body(down_seconds=down_seconds, regenerate_tls=regenerate_tls, locked=locked, wait=wait),
        )

    def hold_calls(self, method: str, after: int = 0) -> Any:
        return self._call("POST", "/calls/hold", _body(method=method, after=after))

    def release_calls(self, method: str) -> Any:
        return self._call("POST", "/calls/release", _body(method=method))


class SimnetControl(_Calls):
    """Blocking client (urllib); every method returns the decoded JSON answer."""

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = str(exc.reason)
            raise SimnetControlError(exc.code, message) from None


class AsyncSimnetControl(_Calls):
    """aiohttp client; every method returns an awaitable of the decoded JSON answer."""

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        async with self._session.request(method, self.base_url + path, json=body) as resp:
            payload = await resp.json(content_type=None)
            if resp.status >= 400:
                raise SimnetControlError(resp.status, payload.get("error", resp.reason))
            return payload

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._request(method, path, body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> AsyncSimnetControl:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
