"""The retry schedule and Retry-After parsing."""

from __future__ import annotations

from email.utils import formatdate

from lightningd_py.plugins.webhooks.delivery import parse_retry_after, retry_delay
from lightningd_py.plugins.webhooks.settings import DEFAULT_RETRY_SCHEDULE


def test_schedule_with_jitter_and_end() -> None:
    schedule = list(DEFAULT_RETRY_SCHEDULE)
    assert retry_delay(schedule, 0, 0.2) == 0.0
    for attempts, base in enumerate(schedule[1:], start=1):
        for _ in range(50):
            delay = retry_delay(schedule, attempts, 0.2)
            assert delay is not None and base * 0.8 <= delay <= base * 1.2
    assert retry_delay(schedule, len(schedule), 0.2) is None  # spent: the delivery fails
    assert retry_delay([0, 5], 1, 0) == 5


def test_retry_after_seconds_and_dates() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == 30
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0
    for bad in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(bad, now) is None
