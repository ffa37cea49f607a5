"""The expiry tracker's open-invoice store against a plain dict of the same invoices."""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from lightningd_py.lnd.openset import KEY_SIZE, OpenInvoice, OpenSet


def invoice(add_index: int, memo: str = "", hold: bool = False) -> OpenInvoice:
    return OpenInvoice(add_index, 1000.5 + add_index, 7 * add_index, 1700, 3600, 0, memo, hold=hold)


def key(n: int) -> bytes:
    return n.to_bytes(4, "big") * (KEY_SIZE // 4)


def assert_same(store: OpenSet, model: dict[bytes, OpenInvoice]) -> None:
    assert len(store) == len(model)
    for k, entry in model.items():
        assert k in store
        assert store.get(k) == entry
        slot = store.slot(k)
        assert store.key(slot) == k
        assert store.head(slot) == (entry.add_index, entry.due)
    found = {store.key(slot): store.at(slot) for slot in store.slots()}
    assert found == model


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "update", "rebuild"]),
        st.integers(0, 60),
        st.text(max_size=12),
    ),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_the_store_holds_what_a_dict_holds(steps: list[tuple[str, int, str]]) -> None:
    store, model = OpenSet(), {}
    add_index = 0
    for op, n, memo in steps:
        k = key(n)
        if op == "add" and k not in model:
            add_index += 1
            model[k] = invoice(add_index, memo, hold=n % 3 == 0)
            store.add(k, model[k])
        elif op == "remove":
            assert store.remove(k) == (model.pop(k, None) is not None)
        elif op == "update" and k in model:
            entry = model[k]
            entry.due += 5
            entry.attempts = min(entry.attempts + 1, 255)
            entry.state = 3
            entry.followed = not entry.followed
            store.update(store.slot(k), entry)
        elif op == "rebuild":
            store = store.rebuilt()
        assert_same(store, model)


def test_keys_of_another_length_are_never_found() -> None:
    store = OpenSet()
    store.add(key(1), invoice(1))
    assert key(1)[:31] not in store
    assert "ab" not in store
    assert not store.remove(key(1) + b"x")
    try:
        store.add(b"short", invoice(2))
    except ValueError as exc:
        assert "32 bytes" in str(exc)
    else:
        raise AssertionError("a short hash was stored")


def test_memos_keep_their_text() -> None:
    store = OpenSet()
    memos = ["", "order 1", "Zahlung für Bestellung №42 ⚡", "x" * 1024]
    for n, memo in enumerate(memos, 1):
        store.add(key(n), invoice(n, memo))
    store.remove(key(2))
    store = store.rebuilt()
    assert [store.get(key(n)).memo for n in (1, 3, 4)] == [memos[0], memos[2], memos[3]]


def test_invoices_are_not_python_objects_and_their_room_is_given_back() -> None:
    """Ten thousand open invoices are a handful of allocations, not one or more each,
    and a rebuilt set after they close is as small as an empty one."""
    tracemalloc.start(1)
    try:
        store = OpenSet()
        before = tracemalloc.take_snapshot()
        for n in range(1, 10_001):
            store.add(key(n), invoice(n, f"order {n}"))
        after = tracemalloc.take_snapshot().compare_to(before, "filename")
        mine = [s for s in after if s.traceback[0].filename.endswith("openset.py")]
        blocks = sum(s.count_diff for s in mine)
        size = sum(s.size_diff for s in mine)
        assert blocks < 20, blocks
        assert size / 10_000 < 140, size / 10_000
        for n in range(1, 10_001):
            assert store.remove(key(n))
        assert store.wasteful()
        store = store.rebuilt()
        left = sum(
            s.size_diff
            for s in tracemalloc.take_snapshot().compare_to(before, "filename")
            if s.traceback[0].filename.endswith("openset.py")
        )
        assert left < 2_000, left
    finally:
        tracemalloc.stop()
