"""Simnet's invoice registry with LND's semantics.

- add_index grows by one per added invoice, settle_index by one per settlement.
- The all-invoices stream sends added (OPEN) and SETTLED invoices only, never ACCEPTED/CANCELED;
  a subscription replays invoices with add_index > its add_index and those with settle_index >
  its settle_index (0 means no replay), each in its state at the subscription, then goes live.
- Expired OPEN invoices are canceled silently (only single-invoice subscribers hear about it).
- LND reads a replay from its database at the subscription. Simnet makes its messages one at a
  time as they are sent, so a replay of a million invoices neither blocks the event loop (and
  every other call) nor is held in memory at once; an invoice that changes before its turn is
  sent as it was (``InvoiceReplay``).
"""

from __future__ import annotations

import hashlib
import heapq
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import coincurve

from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.simnet import bolt11
from lightningd_py.simnet.hub import Hub

__all__ = [
    "DEFAULT_CLTV_EXPIRY",
    "DEFAULT_INVOICE_EXPIRY",
    "InvoiceError",
    "InvoiceRecord",
    "InvoiceRegistry",
    "InvoiceReplay",
    "hint_proto",
]

DEFAULT_INVOICE_EXPIRY = 86400
DEFAULT_CLTV_EXPIRY = 80
MAX_MEMO = 1024

OPEN = ln.Invoice.OPEN
SETTLED = ln.Invoice.SETTLED
CANCELED = ln.Invoice.CANCELED
ACCEPTED = ln.Invoice.ACCEPTED


class InvoiceError(Exception):
    """An invoice operation LND would refuse; `not_found` maps to gRPC NOT_FOUND."""

    def __init__(self, message: str, *, not_found: bool = False, invalid: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found
        self.invalid = invalid


@dataclass(slots=True)
class InvoiceRecord:
    memo: str
    r_hash: bytes
    r_preimage: bytes
    value_msat: int
    creation_date: int
    expiry: int
    cltv_expiry: int
    payment_request: str
    payment_addr: bytes
    description_hash: bytes
    private: bool
    add_index: int
    is_hold: bool = False
    state: int = OPEN
    settle_index: int = 0
    settle_date: int = 0
    amt_paid_msat: int = 0
    deleted: bool = False
    htlcs: list[ln.InvoiceHTLC] = field(default_factory=list)
    route_hints: list[ln.RouteHint] = field(default_factory=list)

    def to_proto(self) -> ln.Invoice:
        # LND shows a hold invoice's preimage only once it knows it (at settlement): empty till then.
        return ln.Invoice(
            memo=self.memo,
            r_preimage=self.r_preimage,
            r_hash=self.r_hash,
            value=self.value_msat // 1000,
            value_msat=self.value_msat,
            settled=self.state == SETTLED,
            creation_date=self.creation_date,
            settle_date=self.settle_date,
            payment_request=self.payment_request,
            description_hash=self.description_hash,
            expiry=self.expiry,
            cltv_expiry=self.cltv_expiry,
            private=self.private,
            add_index=self.add_index,
            settle_index=self.settle_index,
            amt_paid=self.amt_paid_msat // 1000,
            amt_paid_sat=self.amt_paid_msat // 1000,
            amt_paid_msat=self.amt_paid_msat,
            state=self.state,
            htlcs=self.htlcs,
            payment_addr=self.payment_addr,
            features=_INVOICE_FEATURES,
            route_hints=self.route_hints,
        )


_FEATURE_NAMES = {8: "tlv-onion", 14: "payment-addr", 17: "multi-path-payments"}
_INVOICE_FEATURES = {
    bit: ln.Feature(name=_FEATURE_NAMES[bit], is_required=bit % 2 == 0, is_known=True)
    for bit in bolt11.INVOICE_FEATURE_BITS
}


def hint_proto(route: tuple[bolt11.RouteHop, ...]) -> ln.RouteHint:
    return ln.RouteHint(
        hop_hints=[
            ln.HopHint(
                node_id=hop.pubkey.hex(),
                chan_id=hop.short_channel_id,
                fee_base_msat=hop.fee_base_msat,
                fee_proportional_millionths=hop.fee_proportional_millionths,
                cltv_expiry_delta=hop.cltv_expiry_delta,
            )
            for hop in route
        ]
    )


class InvoiceReplay:
    """The backlog of one SubscribeInvoices call: invoices added after its add_index, then
    those settled after its settle_index, as they were when it subscribed.

    Iterating makes the messages one by one. Until the additions are sent, the registry
    calls ``keep`` before it changes an invoice, so one still to be sent goes out in its
    state at the subscription, as LND's database read has it. ``close`` when done.
    """

    def __init__(self, registry: InvoiceRegistry, add_index: int, settle_index: int) -> None:
        self._registry = registry
        # Positions in by_add / settled; index 0 replays nothing.
        self._next_add = add_index
        self._adds_end = len(registry.by_add) if add_index else add_index
        self._settles = range(settle_index, len(registry.settled) if settle_index else settle_index)
        self._kept: dict[int, tuple[int, bytes]] = {}
        if self._next_add < self._adds_end:
            registry.replays.add(self)

    def keep(self, rec: InvoiceRecord) -> None:
        """``rec`` is about to change: keep what it is now if it is still to be sent."""
        position = rec.add_index - 1
        if self._next_add <= position < self._adds_end and position not in self._kept:
            self._kept[position] = (rec.state, rec.to_proto().SerializeToString())

    def __iter__(self) -> Iterator[bytes]:
        registry = self._registry
        by_add = registry.by_add
        while self._next_add < self._adds_end:
            position = self._next_add
            self._next_add += 1
            kept = self._kept.pop(position, None)
            rec = by_add[position]
            state = rec.state if kept is None else kept[0]
            # As on the live stream, LND's subscription passes on neither ACCEPTED nor
            # CANCELED invoices.
            if state != OPEN and state != SETTLED:
                continue
            registry.replayed += 1
            yield rec.to_proto().SerializeToString() if kept is None else kept[1]
        self.close()
        # Settled invoices never change again: no earlier state to keep.
        settled = registry.settled
        for position in self._settles:
            registry.replayed += 1
            yield settled[position].to_proto().SerializeToString()

    def close(self) -> None:
        self._registry.replays.discard(self)
        self._kept.clear()


class InvoiceRegistry:
    """All invoices of the simulated node, plus the invoice streams' fan-out."""

    def __init__(
        self,
        key: coincurve.PrivateKey,
        network: str,
        height: Callable[[], int],
        hints: Callable[[int], tuple[tuple[bolt11.RouteHop, ...], ...]] = lambda amt: (),
    ) -> None:
        self._key = key
        self._hints = hints
        self._network = network
        self._height = height
        self.by_add: list[InvoiceRecord] = []
        self.by_hash: dict[bytes, InvoiceRecord] = {}
        self.settled: list[InvoiceRecord] = []
        # The all-invoices stream carries pre-serialized Invoice bytes with their kind.
        self.stream: Hub[tuple[int, int, bytes]] = Hub()
        self.single: dict[bytes, Hub[bytes]] = {}
        self.replays: set[InvoiceReplay] = set()
        self.replayed = 0
        """Messages sent in SubscribeInvoices replays so far."""
        self._expiry_heap: list[tuple[float, int]] = []
        self._htlc_index = 0

    # ---- creation -----------------------------------------------------------------
    def add(
        self,
        *,
        value_msat: int,
        memo: str = "",
        expiry: int = 0,
        preimage: bytes = b"",
        payment_hash: bytes = b"",
        description_hash: bytes = b"",
        cltv_expiry: int = 0,
        private: bool = False,
        hold: bool = False,
        notify: bool = True,
    ) -> InvoiceRecord:
        if value_msat < 0:
            raise InvoiceError("value: must not be negative", invalid=True)
        if len(memo) > MAX_MEMO:
            raise InvoiceError(f"memo too large: {len(memo)} bytes (maxsize={MAX_MEMO})", invalid=True)
        if description_hash and len(description_hash) != 32:
            raise InvoiceError(f"description hash is 32 bytes, got {len(description_hash)}", invalid=True)
        if expiry < 0:
            raise InvoiceError("expiry: must not be negative", invalid=True)
        if hold:
            if len(payment_hash) != 32:
                raise InvoiceError("hash: expected 32 bytes", invalid=True)
            r_hash = payment_hash
        else:
            if preimage and len(preimage) != 32:
                raise InvoiceError("r_preimage: expected 32 bytes", invalid=True)
            preimage = preimage or secrets.token_bytes(32)
            r_hash = hashlib.sha256(preimage).digest()
        if r_hash in self.by_hash:
            raise InvoiceError("invoice with payment hash already exists")
        expiry = expiry or DEFAULT_INVOICE_EXPIRY
        cltv = cltv_expiry or DEFAULT_CLTV_EXPIRY
        now = int(time.time())
        payment_addr = secrets.token_bytes(32)
        # Like LND, a private invoice carries hints for private channels that can take the amount.
        hints = self._hints(value_msat) if private else ()
        pr = bolt11.encode(
            key=self._key,
            network=self._network,
            amount_msat=value_msat,
            timestamp=now,
            payment_hash=r_hash,
            payment_secret=payment_addr,
            description=memo,
            description_hash=description_hash,
            expiry=expiry,
            min_final_cltv=cltv,
            route_hints=hints,
        )
        rec = InvoiceRecord(
            memo=memo,
            r_hash=r_hash,
            r_preimage=b"" if hold else preimage,
            value_msat=value_msat,
            creation_date=now,
            expiry=expiry,
            cltv_expiry=cltv,
            payment_request=pr,
            payment_addr=payment_addr,
            description_hash=description_hash,
            private=private,
            add_index=len(self.by_add) + 1,
            is_hold=hold,
            route_hints=[hint_proto(route) for route in hints],
        )
        self.by_add.append(rec)
        self.by_hash[r_hash] = rec
        heapq.heappush(self._expiry_heap, (now + expiry, rec.add_index))
        if notify:
            self._notify(rec)
        return rec

    # ---- state changes ------------------------------------------------------------
    def lookup(self, r_hash: bytes) -> InvoiceRecord:
        rec = self.by_hash.get(r_hash)
        if rec is None:
            raise InvoiceError("unable to locate invoice", not_found=True)
        return rec

    def _htlc(self, chan_id: int, amt_msat: int, state: int) -> ln.InvoiceHTLC:
        self._htlc_index += 1
        now = int(time.time())
        height = self._height()
        return ln.InvoiceHTLC(
            chan_id=chan_id,
            htlc_index=self._htlc_index,
            amt_msat=amt_msat,
            accept_height=height,
            accept_time=now,
            resolve_time=now if state == ln.SETTLED else 0,
            expiry_height=height + 80,
            state=state,
            mpp_total_amt_msat=amt_msat,
        )

    def pay(self, r_hash: bytes, amt_msat: int = 0, chan_id: int = 0) -> InvoiceRecord:
        """An HTLC for this invoice arrives: settle it, or accept it when it is a hold invoice."""
        rec = self.lookup(r_hash)
        if rec.state == SETTLED:
            raise InvoiceError("invoice already settled")
        if rec.state == CANCELED:
            raise InvoiceError("invoice already canceled")
        if rec.state == ACCEPTED:
            raise InvoiceError("invoice already accepted")
        amount = amt_msat or rec.value_msat
        if amount <= 0:
            raise InvoiceError("amt_msat: an amount is required to pay a zero-amount invoice", invalid=True)
        if rec.value_msat and amount < rec.value_msat:
            raise InvoiceError(
                f"amt_msat: {amount} is below the invoice amount {rec.value_msat}", invalid=True
            )
        self._changing(rec)
        rec.amt_paid_msat = amount
        if rec.is_hold:
            rec.htlcs.append(self._htlc(chan_id, amount, ln.ACCEPTED))
            rec.state = ACCEPTED
            self._notify(rec)
        else:
            rec.htlcs.append(self._htlc(chan_id, amount, ln.SETTLED))
            self._settle(rec)
        return rec

    def _settle(self, rec: InvoiceRecord) -> None:
        rec.state = SETTLED
        rec.settle_date = int(time.time())
        self.settled.append(rec)
        rec.settle_index = len(self.settled)
        self._notify(rec)

    def settle_hold(self, preimage: bytes) -> InvoiceRecord:
        if len(preimage) != 32:
            raise InvoiceError("preimage: expected 32 bytes", invalid=True)
        rec = self.lookup(hashlib.sha256(preimage).digest())
        if rec.state == SETTLED:
            return rec  # LND treats a repeated settle with the same preimage as success
        if rec.state == CANCELED:
            raise InvoiceError("invoice already canceled")
        if rec.state == OPEN:
            raise InvoiceError("invoice still open")
        self._changing(rec)
        rec.r_preimage = preimage
        for htlc in rec.htlcs:
            htlc.state = ln.SETTLED
            htlc.resolve_time = int(time.time())
        self._settle(rec)
        return rec

    def cancel(self, r_hash: bytes) -> InvoiceRecord:
        rec = self.lookup(r_hash)
        if rec.state == SETTLED:
            raise InvoiceError("invoice already settled")
        if rec.state != CANCELED:
            self._cancel(rec)
        return rec

    def _cancel(self, rec: InvoiceRecord) -> None:
        self._changing(rec)
        rec.state = CANCELED
        rec.amt_paid_msat = 0
        for htlc in rec.htlcs:
            htlc.state = ln.CANCELED
            htlc.resolve_time = int(time.time())
        self._notify(rec)

    def delete_canceled(self, r_hash: bytes) -> InvoiceRecord:
        """LND's DeleteCanceledInvoice (and what ``gc-canceled-invoices-on-the-fly``
        does to every canceled invoice): the invoice is gone from lookups and lists."""
        rec = self.lookup(r_hash)
        if rec.state != CANCELED:
            raise InvoiceError("invoice not canceled")
        del self.by_hash[r_hash]
        rec.deleted = True
        return rec

    def expire_due(self, now: float | None = None) -> int:
        """Cancel OPEN invoices whose expiry passed; returns how many were canceled."""
        now = time.time() if now is None else now
        count = 0
        heap = self._expiry_heap
        while heap and heap[0][0] <= now:
            _, add_index = heapq.heappop(heap)
            rec = self.by_add[add_index - 1]
            if rec.state == OPEN:
                self._cancel(rec)
                count += 1
        return count

    def next_expiry(self) -> float | None:
        return self._expiry_heap[0][0] if self._expiry_heap else None

    # ---- streams ------------------------------------------------------------------
    def _changing(self, rec: InvoiceRecord) -> None:
        for replay in self.replays:
            replay.keep(rec)

    def _notify(self, rec: InvoiceRecord) -> None:
        single = self.single.get(rec.r_hash)
        to_stream = rec.state in (OPEN, SETTLED) and len(self.stream) > 0
        to_single = single is not None and len(single) > 0
        if not (to_stream or to_single):
            return
        data = rec.to_proto().SerializeToString()
        if to_stream:
            self.stream.publish((rec.add_index, rec.settle_index, data))
        if to_single and single is not None:
            single.publish(data)

    def replay(self, add_index: int, settle_index: int) -> InvoiceReplay:
        """What LND replays to a new SubscribeInvoices(add_index, settle_index) subscriber,
        as of now."""
        return InvoiceReplay(self, add_index, settle_index)

    def query(
        self,
        *,
        index_offset: int,
        num_max: int,
        pending_only: bool,
        reversed_: bool,
        creation_date_start: int = 0,
        creation_date_end: int = 0,
    ) -> tuple[list[InvoiceRecord], int, int]:
        """LND's QueryInvoices: returns (invoices ascending, first_index_offset, last_index_offset)."""

        def keep(r: InvoiceRecord) -> bool:
            if r.deleted:
                return False
            if pending_only and r.state not in (OPEN, ACCEPTED):
                return False
            if creation_date_start and r.creation_date < creation_date_start:
                return False
            return not (creation_date_end and r.creation_date > creation_date_end)

        found: list[InvoiceRecord] = []
        if reversed_:
            start = len(self.by_add) if index_offset == 0 else min(index_offset - 1, len(self.by_add))
            for i in range(start - 1, -1, -1):
                r = self.by_add[i]
                if keep(r):
                    found.append(r)
                    if len(found) >= num_max:
                        break
            found.reverse()
        else:
            for r in self.by_add[index_offset:]:
                if keep(r):
                    found.append(r)
                    if len(found) >= num_max:
                        break
        if not found:
            return [], 0, 0
        return found, found[0].add_index, found[-1].add_index
