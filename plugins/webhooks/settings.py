"""The ``[plugins.webhooks]`` config table.

Endpoints are a list of tables (``[[plugins.webhooks.endpoints]]``). Each problem is a
config error at start that names the endpoint and the key. Secrets are given inline, as
an environment reference (``"$NAME"``) or in a file (``secret_file``, one secret per
line); none of them is ever echoed back in an error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    model_validator,
)

from lightningd_py.api import PluginSettings
from lightningd_py.config import resolve_secret_ref

from .catalogue import pattern_problem
from .signing import SigningKey

__all__ = ["DEFAULT_RETRY_SCHEDULE", "EndpointSettings", "WebhooksSettings"]

# Delays before each attempt, in seconds: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class EndpointSettings(BaseModel):
    """One ``[[plugins.webhooks.endpoints]]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Stable identifier: part of every webhook-id, used in the API and metrics.")
    url: str = Field(description="Where deliveries are POSTed (http or https).")
    secret: Annotated[list[SecretStr], BeforeValidator(_as_list)] | None = Field(
        default=None,
        description='"whsec_..." or "$ENV_VAR", or a list of two of them while rotating.',
    )
    secret_file: Path | None = Field(
        default=None, description="A file holding one or two secrets, one a line."
    )
    events: list[str] = Field(
        min_length=1, description='Event names or globs, e.g. ["payment.confirmed", "channel.*"].'
    )
    timeout: float = Field(default=10.0, gt=0, le=120, description="Seconds allowed for one attempt.")
    concurrency: int = Field(
        default=8, ge=1, le=256, description="Attempts in flight at once to this endpoint."
    )
    enabled: bool = True

    _keys: tuple[SigningKey, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> EndpointSettings:
        # One "key: message" line per problem: the config loader files each under its key.
        who = f"endpoint {self.name!r}"
        problems = []
        if not _NAME.match(self.name):
            problems.append(
                f"name: {who}: use 1-63 of a-z, 0-9, '_' and '-', starting with a letter or digit"
            )
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"url: {who}: not an http(s) URL")
        for i, pattern in enumerate(self.events):
            problem = pattern_problem(pattern)
            if problem:
                problems.append(f"events: {who}: [{i}] {problem}")
        if (self.secret is None) == (self.secret_file is None):
            problems.append(f"secret: {who}: give exactly one of secret or secret_file")
        else:
            try:
                self._keys = self._load_keys(info)
            except ValueError as exc:
                problems.append(f"{'secret_file' if self.secret_file else 'secret'}: {who}: {exc}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _load_keys(self, info: ValidationInfo) -> tuple[SigningKey, ...]:
        """Decode the secrets; errors never contain them."""
        if self.secret_file is not None:
            path = self.secret_file.expanduser()
            base = info.context.get("base_dir") if isinstance(info.context, dict) else None
            if base is not None and not path.is_absolute():
                path = Path(base) / path
            try:
                text = path.read_text()
            except OSError as exc:
                raise ValueError(f"cannot read {str(path)!r} ({exc.strerror})") from None
            raw = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            raw = [s.get_secret_value() for s in self.secret or []]
        if not 1 <= len(raw) <= 2:
            raise ValueError("expected one secret, or two while rotating")
        keys = []
        for i, text in enumerate(raw):
            try:
                keys.append(SigningKey.parse(resolve_secret_ref(text)))
            except ValueError as exc:
                raise ValueError(f"secret {i + 1}: {exc}") from None
        return tuple(keys)

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """The decoded signing keys (one, or two during a rotation)."""
        return self._keys


class WebhooksSettings(PluginSettings):
    """``[plugins.webhooks]``."""

    endpoints: list[EndpointSettings] = Field(default_factory=list)
    retry_schedule: list[Annotated[float, Field(ge=0, le=7 * 86400)]] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE),
        min_length=1,
        max_length=30,
        description="Seconds to wait before each attempt (first normally 0); length = attempts.",
    )
    retry_jitter: float = Field(
        default=0.2, ge=0, le=1, description="Each wait varies by up to this fraction."
    )
    max_retry_after: float = Field(
        default=36000, ge=0, description="Longest Retry-After (seconds) honoured from a receiver."
    )
    scan_interval: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds between scans of the outbox for work not held in memory.",
    )
    memory_queue: int = Field(
        default=10_000,
        ge=10,
        le=1_000_000,
        description="Deliveries held in memory per endpoint; the rest wait in the database.",
    )
    retention_days: float = Field(
        default=30, gt=0, description="Delivered rows older than this are deleted (failed rows are kept)."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> WebhooksSettings:
        seen: set[str] = set()
        for ep in self.endpoints:
            if ep.name in seen:
                raise ValueError(f"endpoints: endpoint {ep.name!r}: the name is used twice")
            seen.add(ep.name)
        return self
