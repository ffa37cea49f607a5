"""Bearer-token authentication and per-client, per-group rate limits."""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from lightningd_py.web import Role

from .settings import ApiToken, RateLimit

__all__ = ["RateLimiter", "TokenAuthenticator", "TokenMatch"]


@dataclass(frozen=True, slots=True)
class TokenMatch:
    name: str
    role: Role


class TokenAuthenticator:
    """Checks ``Authorization: Bearer <token>`` against the configured token hashes.

    Every configured digest is compared, with ``hmac.compare_digest``, whatever the
    outcome, so timing reveals neither which token nor how much of one matched.
    """

    def __init__(self, tokens: Iterable[ApiToken]) -> None:
        self._tokens = [(bytes.fromhex(t.sha256), TokenMatch(t.name, t.role)) for t in tokens]

    def check(self, authorization: str | None) -> TokenMatch | None:
        """The matching token, or None when the header is missing or matches none."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        found: TokenMatch | None = None
        for stored, match in self._tokens:
            if hmac.compare_digest(digest, stored):
                found = match
        return found


class RateLimiter:
    """Generic cell rate algorithm per (client, group): ``requests`` may come at once,
    then one more every ``period / requests`` seconds.

    One float per active (client, group); entries that have fully recovered are pruned
    when the table grows, so memory stays bounded by the number of active clients.
    """

    MAX_KEYS = 50_000

    def __init__(self, limits: Mapping[str, RateLimit]) -> None:
        self._limits = dict(limits)
        self._tat: dict[tuple[str, str], float] = {}

    def limit_for(self, group: str) -> RateLimit:
        return self._limits.get(group) or self._limits.get("general") or RateLimit(requests=0, period=1)

    def hit(self, client: str, group: str, now: float) -> float | None:
        """Count one request; None if allowed, else the seconds until one is allowed."""
        limit = self.limit_for(group)
        if limit.requests <= 0:
            return None
        interval = limit.period / limit.requests
        key = (client, group)
        tat = self._tat.get(key, now)
        if tat < now:
            tat = now
        new_tat = tat + interval
        wait = new_tat - now - limit.period
        if wait > 1e-9:
            return wait
        if len(self._tat) >= self.MAX_KEYS and key not in self._tat:
            self._prune(now)
        self._tat[key] = new_tat
        return None

    def _prune(self, now: float) -> None:
        self._tat = {k: v for k, v in self._tat.items() if v > now}

    @staticmethod
    def retry_after(wait: float) -> str:
        """The ``Retry-After`` header value (whole seconds, at least 1)."""
        return str(max(1, math.ceil(wait)))
