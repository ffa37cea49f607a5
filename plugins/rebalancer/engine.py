"""Running rebalances: circular self-payments under the fee budget.

One rebalance is an invoice to ourselves paid out through the source channel
(``outgoing_chan_ids``) and back in through the depleted channel's peer
(``last_hop_pubkey``), with ``allow_self_payment``. Each attempt's fee limit is the
smallest of the ppm limit, the absolute cap, what the target channel's own fee rate
earns back on the amount (the economic check) and what is left of the budget; it is
reserved before the payment is sent. Failed attempts are retried with half the amount,
up to ``max_attempts`` and never below ``min_amount_sat``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from lightningd_py.errors import LndError
from lightningd_py.events import REBALANCE_MEMO_PREFIX, RebalanceFailed, RebalanceSucceeded
from lightningd_py.lnd.types import Channel, ChannelFee, Payment

from .ledger import Ledger
from .planner import PlannedRebalance, advise, pair
from .settings import RebalancerSettings

if TYPE_CHECKING:
    from lightningd_py.daemon import Daemon

__all__ = ["RebalanceError", "RebalanceResult", "Rebalancer", "RoundResult", "Snapshot"]

# Worth retrying with a smaller amount: the route lacked liquidity or fit no fee limit.
_RETRY_REASONS = frozenset(
    {"FAILURE_REASON_NO_ROUTE", "FAILURE_REASON_INSUFFICIENT_BALANCE", "FAILURE_REASON_TIMEOUT"}
)


class RebalanceError(Exception):
    """A request the rebalancer refuses before anything is paid.

    :ivar code: stable machine code (``unknown_channel``, ``channel_busy``, ...).
    :ivar field: the request field at fault, if any.
    :ivar status: the HTTP status the API answers with.
    """

    def __init__(self, code: str, message: str, field: str | None = None, status: int = 409) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status = status


class RebalanceResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one rebalance (``status``: succeeded, failed or dry_run)."""

    rebalance_id: str
    status: str
    outgoing_chan_id: int
    incoming_chan_id: int
    last_hop_pubkey: str
    requested_msat: int
    moved_msat: int = 0
    fee_msat: int = 0
    max_fee_msat: int = 0
    attempts: int = 0
    failure_reason: str = ""
    dry_run: bool = False


class RoundResult(msgspec.Struct, frozen=True, kw_only=True):
    """An automatic round: what was planned and what happened."""

    started: float
    finished: float
    dry_run: bool
    planned: int
    results: list[RebalanceResult]
    budget_exhausted: bool = False

    @property
    def fees_msat(self) -> int:
        return sum(r.fee_msat for r in self.results)


@dataclass(slots=True)
class Snapshot:
    """In-memory numbers the metrics collector and health answer from."""

    budget_limit_msat: int = 0
    budget_spent_msat: int = 0
    budget_reserved_msat: int = 0
    results: dict[str, int] = field(default_factory=lambda: {"succeeded": 0, "failed": 0, "dry_run": 0})
    attempts: dict[str, int] = field(default_factory=dict)
    fees_paid_msat: int = 0
    last_backup_time: float = 0.0
    backups_written: int = 0
    last_round: float = 0.0
    round_in_progress: bool = False
    fee_updates: dict[str, int] = field(default_factory=lambda: {"applied": 0, "dry_run": 0, "failed": 0})
    scheduler_running: bool = False


def _route(payment: Payment) -> list[dict[str, Any]]:
    htlcs = [h for h in payment.htlcs if h.status == "SUCCEEDED"] or list(payment.htlcs[-1:])
    if not htlcs:
        return []
    return [
        {
            "chan_id": h.chan_id,
            "pubkey": h.pubkey,
            "fee_msat": h.fee_msat,
            "amt_to_forward_msat": h.amt_to_forward_msat,
        }
        for h in htlcs[0].hops
    ]


def _earn_back(fee: ChannelFee | None, amount_msat: int) -> int:
    """What forwarding ``amount_msat`` out through the target channel again earns."""
    if fee is None:
        return 0
    return fee.base_fee_msat + amount_msat * fee.fee_per_mil // 1_000_000


class Rebalancer:
    """Executes rebalances and rounds for one daemon."""

    def __init__(self, daemon: Daemon, ledger: Ledger, settings: Callable[[], RebalancerSettings]) -> None:
        self.daemon = daemon
        self.ledger = ledger
        self._settings = settings
        self.snapshot = Snapshot()
        # Reservations are also serialized by the store's single writer; the lock keeps
        # budget checks and reservations of this process in one order.
        self._budget_lock = anyio.Lock()
        self._budget_changed = anyio.Event()
        self._chan_locks: dict[int, anyio.Lock] = {}
        self._round_lock = anyio.Lock()

    @property
    def settings(self) -> RebalancerSettings:
        return self._settings()

    # ------------------------------------------------------------ state for the API

    async def refresh_budget(self) -> None:
        state = await self.ledger.budget(self.settings.daily_budget_msat)
        self.snapshot.budget_limit_msat = state.limit_msat
        self.snapshot.budget_spent_msat = state.spent_msat
        self.snapshot.budget_reserved_msat = state.reserved_msat

    async def recommendations(self) -> dict[str, Any]:
        """Advice for every channel and the rebalances an automatic round would run."""
        s = self.settings
        now = time.time()
        channels = await self.daemon.lnd.list_channels()
        volumes = await self.ledger.volumes(now - s.volume_days * 86400)
        cooldowns = await self.ledger.cooldowns(now)
        advice = advise(channels, s, volumes, cooldowns, now)
        plans = pair(advice, s)
        return {"channels": advice, "rebalances": plans[: s.max_rebalances_per_round]}

    # ------------------------------------------------------------ one rebalance

    async def execute(
        self,
        *,
        outgoing_chan_id: int | None,
        incoming_chan_id: int | None,
        amount_sat: int | None,
        mode: str = "manual",
        dry_run: bool | None = None,
        max_fee_ppm: int | None = None,
        ignore_economics: bool = False,
        wait_for_channels: bool = False,
    ) -> RebalanceResult:
        """Run one rebalance. Channels and amount not given come from the recommendations
        (the top one, or the best partner of the given channel).

        :raises RebalanceError: unknown or inactive channels, a pair that cannot work, a
            channel cooling down or already being rebalanced.
        """
        s = self.settings
        now = time.time()
        if amount_sat is not None and amount_sat < s.min_amount_sat:
            raise RebalanceError(
                "amount_too_small",
                f"amount_sat must be at least min_amount_sat ({s.min_amount_sat})",
                "amount_sat",
                400,
            )
        channels = {c.chan_id: c for c in await self.daemon.lnd.list_channels()}
        for name, chan_id in (("outgoing_chan_id", outgoing_chan_id), ("incoming_chan_id", incoming_chan_id)):
            if chan_id is not None:
                c = channels.get(chan_id)
                if c is None:
                    raise RebalanceError("unknown_channel", f"no open channel with id {chan_id}", name, 404)
                if not c.active:
                    raise RebalanceError("channel_inactive", f"channel {chan_id} is not active", name)
        cooldowns = await self.ledger.cooldowns(now)
        for name, chan_id in (("outgoing_chan_id", outgoing_chan_id), ("incoming_chan_id", incoming_chan_id)):
            if chan_id is not None and chan_id in cooldowns:
                raise RebalanceError(
                    "cooldown",
                    f"channel {chan_id} is cooling down after a failed rebalance until "
                    f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(cooldowns[chan_id]))}",
                    name,
                )
        if outgoing_chan_id is not None and incoming_chan_id is not None:
            if channels[outgoing_chan_id].remote_pubkey == channels[incoming_chan_id].remote_pubkey:
                raise RebalanceError(
                    "same_peer",
                    "the outgoing and incoming channels must be with different peers",
                    "incoming_chan_id",
                    400,
                )
        if outgoing_chan_id is None or incoming_chan_id is None or amount_sat is None:
            plan = self._choose(channels, s, outgoing_chan_id, incoming_chan_id, cooldowns, now)
            outgoing_chan_id = plan.outgoing_chan_id
            incoming_chan_id = plan.incoming_chan_id
            amount_sat = amount_sat if amount_sat is not None else plan.amount_sat
        source, target = channels[outgoing_chan_id], channels[incoming_chan_id]
        plan = PlannedRebalance(
            outgoing_chan_id=source.chan_id,
            incoming_chan_id=target.chan_id,
            last_hop_pubkey=target.remote_pubkey,
            amount_sat=amount_sat,
            priority=0,
        )
        fees = await self._fees()
        return await self._run(
            plan,
            mode=mode,
            dry_run=s.dry_run if dry_run is None else dry_run,
            max_fee_ppm=max_fee_ppm,
            ignore_economics=ignore_economics,
            target_fee=fees.get(target.chan_id),
            wait=wait_for_channels,
        )

    def _choose(
        self,
        channels: Mapping[int, Channel],
        s: RebalancerSettings,
        outgoing: int | None,
        incoming: int | None,
        cooldowns: Mapping[int, float],
        now: float,
    ) -> PlannedRebalance:
        advice = advise(channels.values(), s, {}, cooldowns, now)
        plans = pair(advice, s)
        for p in plans:
            if (outgoing is None or p.outgoing_chan_id == outgoing) and (
                incoming is None or p.incoming_chan_id == incoming
            ):
                return p
        if outgoing is not None and incoming is not None:
            # Both given, only the amount missing: move what the target needs.
            src, dst = channels[outgoing], channels[incoming]
            need = (
                int(s.target_ratio * (dst.local_balance_sat + dst.remote_balance_sat)) - dst.local_balance_sat
            )
            spare = src.local_balance_sat - int(
                s.target_ratio * (src.local_balance_sat + src.remote_balance_sat)
            )
            amount = min(need, spare, s.max_amount_sat)
            if amount < s.min_amount_sat:
                raise RebalanceError(
                    "nothing_to_move",
                    f"moving from {outgoing} to {incoming} would push one of them past the target ratio; "
                    "give amount_sat to move anyway",
                    "amount_sat",
                )
            return PlannedRebalance(
                outgoing_chan_id=outgoing,
                incoming_chan_id=incoming,
                last_hop_pubkey=dst.remote_pubkey,
                amount_sat=amount,
                priority=0,
            )
        raise RebalanceError("nothing_to_rebalance", "no rebalance is recommended for these channels", None)

    async def _fees(self) -> dict[int, ChannelFee]:
        report = await self.daemon.lnd.fee_report()
        return {f.chan_id: f for f in report.channel_fees}

    def _lock(self, chan_id: int) -> anyio.Lock:
        return self._chan_locks.setdefault(chan_id, anyio.Lock())

    async def _run(
        self,
        plan: PlannedRebalance,
        *,
        mode: str,
        dry_run: bool,
        max_fee_ppm: int | None,
        ignore_economics: bool,
        target_fee: ChannelFee | None,
        wait: bool,
    ) -> RebalanceResult:
        async with AsyncExitStack() as stack:
            # Both channels, in id order (no deadlock between two rebalances).
            for chan_id in sorted({plan.outgoing_chan_id, plan.incoming_chan_id}):
                lock = self._lock(chan_id)
                if wait:
                    await stack.enter_async_context(lock)
                    continue
                try:
                    lock.acquire_nowait()
                except anyio.WouldBlock:
                    raise RebalanceError(
                        "channel_busy", f"channel {chan_id} is being rebalanced", None
                    ) from None
                stack.callback(lock.release)
            result = await self._attempts(plan, mode, dry_run, max_fee_ppm, ignore_economics, target_fee)
        return result

    async def _attempts(
        self,
        plan: PlannedRebalance,
        mode: str,
        dry_run: bool,
        max_fee_ppm: int | None,
        ignore_economics: bool,
        target_fee: ChannelFee | None,
    ) -> RebalanceResult:
        s = self.settings
        rid = uuid.uuid4().hex
        requested = plan.amount_sat * 1000
        await self.ledger.start_run(
            rebalance_id=rid,
            mode=mode,
            outgoing_chan_id=plan.outgoing_chan_id,
            incoming_chan_id=plan.incoming_chan_id,
            last_hop_pubkey=plan.last_hop_pubkey,
            requested_msat=requested,
            dry_run=dry_run,
        )
        ppm = s.max_fee_ppm if max_fee_ppm is None else max_fee_ppm
        economic = s.economic_check and not ignore_economics
        amount = requested
        attempts = 0
        status, moved, paid, reason, payment_hash, max_fee = "failed", 0, 0, "", "", 0
        cool = False
        while attempts < s.max_attempts and amount >= s.min_amount_sat * 1000:
            limit = min(amount * ppm // 1_000_000, s.max_fee_msat)
            if economic:
                earn = _earn_back(target_fee, amount)
                if earn <= 0:
                    reason = "uneconomic: the incoming channel's own fee rate earns nothing back"
                    break
                limit = min(limit, earn)
            attempts += 1
            if dry_run:
                budget = await self.ledger.budget(s.daily_budget_msat)
                if budget.remaining_msat < limit and limit > 0:
                    reason = "budget_exhausted"
                    break
                status, moved, max_fee, reason = "dry_run", amount, limit, ""
                break
            held = await self._reserve(rid, attempts, amount, limit)
            if held is None:
                attempts -= 1
                reason = "budget_exhausted"
                break
            attempt_id, held_fee = held
            # Less than the limit means the budget's last crumbs: a failure then is the
            # budget's, not the channels'.
            starved = held_fee < limit
            limit = held_fee
            max_fee = max(max_fee, limit)
            await self.refresh_budget()
            try:
                outcome = await self._pay(attempt_id, rid, plan, amount, limit)
            finally:
                # Whatever happened, attempts waiting for budget may look again.
                self._budget_changed.set()
                self._budget_changed = anyio.Event()
            payment_hash = outcome.payment_hash or payment_hash
            self.snapshot.attempts[outcome.status] = self.snapshot.attempts.get(outcome.status, 0) + 1
            if outcome.status == "succeeded":
                status, moved, paid, reason = "succeeded", amount, outcome.fee_msat, ""
                break
            reason = outcome.failure_reason
            if starved and outcome.status == "failed" and reason in _RETRY_REASONS:
                reason, cool = "budget_exhausted", False
                break
            if outcome.status == "unknown" or outcome.failure_reason not in _RETRY_REASONS:
                # Only a payment that failed on the network says something about the channels.
                cool = outcome.failure_reason.startswith("FAILURE_REASON")
                break
            cool = True
            amount //= 2
        else:
            if not reason:
                reason = "amount below min_amount_sat"
        if status == "failed" and not reason:
            reason = "no attempt made"
        await self.ledger.finish_run(
            rid, status=status, moved_msat=moved, fee_msat=paid, attempts=attempts, failure_reason=reason
        )
        if status == "failed" and cool and s.cooldown > 0:
            await self.ledger.cool_down(
                (plan.outgoing_chan_id, plan.incoming_chan_id), time.time() + s.cooldown, reason
            )
        await self.refresh_budget()
        self.snapshot.results[status] = self.snapshot.results.get(status, 0) + 1
        self.snapshot.fees_paid_msat += paid
        result = RebalanceResult(
            rebalance_id=rid,
            status=status,
            outgoing_chan_id=plan.outgoing_chan_id,
            incoming_chan_id=plan.incoming_chan_id,
            last_hop_pubkey=plan.last_hop_pubkey,
            requested_msat=requested,
            moved_msat=moved,
            fee_msat=paid,
            max_fee_msat=max_fee,
            attempts=attempts,
            failure_reason=reason,
            dry_run=dry_run,
        )
        event_type = RebalanceFailed if status == "failed" else RebalanceSucceeded
        await self.daemon.emit(
            event_type(
                rebalance_id=rid,
                outgoing_chan_id=plan.outgoing_chan_id,
                incoming_chan_id=plan.incoming_chan_id,
                amount_msat=moved if status != "failed" else requested,
                fee_msat=paid,
                attempts=attempts,
                failure_reason=reason,
                payment_hash=payment_hash,
                dry_run=dry_run,
            )
        )
        self.daemon.log.info(
            "rebalance finished",
            rebalance_id=rid,
            status=status,
            outgoing_chan_id=plan.outgoing_chan_id,
            incoming_chan_id=plan.incoming_chan_id,
            moved_msat=moved,
            fee_msat=paid,
            attempts=attempts,
            reason=reason,
        )
        return result

    async def _reserve(self, rid: str, attempt: int, amount: int, limit: int) -> tuple[int, int] | None:
        """Reserve the attempt's fee limit. While other attempts hold part of the budget,
        wait for them to finish rather than fail or take a smaller limit; only when
        nothing else is in flight does an attempt take what is left, or fail."""
        s = self.settings
        deadline = time.monotonic() + s.payment_timeout + 60
        while True:
            async with self._budget_lock:
                held = await self.ledger.reserve(
                    rebalance_id=rid,
                    attempt=attempt,
                    amount_msat=amount,
                    max_fee_msat=limit,
                    budget_msat=s.daily_budget_msat,
                    partial=False,
                )
                if held is not None:
                    return held
                state = await self.ledger.budget(s.daily_budget_msat)
                in_flight = state.reserved_msat > 0 and state.spent_msat < state.limit_msat
                if not in_flight or time.monotonic() > deadline:
                    return await self.ledger.reserve(
                        rebalance_id=rid,
                        attempt=attempt,
                        amount_msat=amount,
                        max_fee_msat=limit,
                        budget_msat=s.daily_budget_msat,
                    )
                changed = self._budget_changed
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                await changed.wait()

    async def _pay(
        self, attempt_id: int, rid: str, plan: PlannedRebalance, amount: int, limit: int
    ) -> _Outcome:
        s = self.settings
        lnd = self.daemon.lnd
        try:
            invoice = await lnd.add_invoice(
                amount, memo=f"{REBALANCE_MEMO_PREFIX}{rid[:12]}", expiry=s.payment_timeout + 600
            )
        except LndError as exc:
            await self.ledger.finish_attempt(
                attempt_id, status="failed", failure_reason=f"add_invoice: {exc.details}"
            )
            return _Outcome("failed", failure_reason=f"invoice failed: {exc.kind}")
        await self.ledger.set_attempt_hash(attempt_id, invoice.payment_hash)
        try:
            payment = await lnd.send_payment(
                invoice.payment_request,
                fee_limit_msat=limit,
                timeout_seconds=s.payment_timeout,
                outgoing_chan_ids=(plan.outgoing_chan_id,),
                last_hop_pubkey=plan.last_hop_pubkey,
                allow_self_payment=True,
            )
        except LndError as exc:
            # The payment may be in flight: keep the reservation until its event settles it.
            unknown = exc.kind in ("unreachable", "timeout", "other")
            await self.ledger.finish_attempt(
                attempt_id,
                status="unknown" if unknown else "failed",
                payment_hash=invoice.payment_hash,
                failure_reason=f"{exc.code}: {exc.details}"[:500],
            )
            return _Outcome("unknown" if unknown else "failed", invoice.payment_hash, failure_reason=exc.kind)
        if payment.status == "SUCCEEDED":
            await self.ledger.finish_attempt(
                attempt_id,
                status="succeeded",
                fee_msat=payment.fee_msat,
                payment_hash=invoice.payment_hash,
                route=_route(payment),
            )
            return _Outcome("succeeded", invoice.payment_hash, fee_msat=payment.fee_msat)
        await self.ledger.finish_attempt(
            attempt_id,
            status="failed",
            payment_hash=invoice.payment_hash,
            route=_route(payment),
            failure_reason=payment.failure_reason,
        )
        try:
            await lnd.cancel_invoice(invoice.payment_hash)
        except LndError as exc:
            self.daemon.log.debug("could not cancel the unpaid rebalance invoice", error=exc.details)
        return _Outcome("failed", invoice.payment_hash, failure_reason=payment.failure_reason)

    # ------------------------------------------------------------ rounds

    async def round(self, *, mode: str = "auto", dry_run: bool | None = None) -> RoundResult:
        """One automatic round: the top recommendations, ``parallel`` at a time, until
        the round's limit or the budget is reached."""
        async with self._round_lock:
            self.snapshot.round_in_progress = True
            try:
                return await self._round(mode, dry_run)
            finally:
                self.snapshot.round_in_progress = False

    async def _round(self, mode: str, dry_run: bool | None) -> RoundResult:
        s = self.settings
        started = time.time()
        self.snapshot.last_round = started
        dry = s.dry_run if dry_run is None else dry_run
        channels = {c.chan_id: c for c in await self.daemon.lnd.list_channels()}
        volumes = await self.ledger.volumes(started - s.volume_days * 86400)
        cooldowns = await self.ledger.cooldowns(started)
        plans = pair(advise(channels.values(), s, volumes, cooldowns, started), s)[
            : s.max_rebalances_per_round
        ]
        fees = await self._fees() if plans else {}
        results: list[RebalanceResult] = []
        exhausted = False
        limiter = anyio.CapacityLimiter(s.parallel)

        async def one(plan: PlannedRebalance) -> None:
            nonlocal exhausted
            async with limiter:
                if exhausted:
                    return
                result = await self._run(
                    plan,
                    mode=mode,
                    dry_run=dry,
                    max_fee_ppm=None,
                    ignore_economics=False,
                    target_fee=fees.get(plan.incoming_chan_id),
                    wait=True,
                )
                results.append(result)
                if result.failure_reason == "budget_exhausted":
                    exhausted = True

        async with anyio.create_task_group() as tg:
            for plan in plans:
                tg.start_soon(one, plan)
        return RoundResult(
            started=started,
            finished=time.time(),
            dry_run=dry,
            planned=len(plans),
            results=results,
            budget_exhausted=exhausted,
        )


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: str
    payment_hash: str = ""
    fee_msat: int = 0
    failure_reason: str = ""
