"""The probe's companion for ``ldp_event_batch``: a plugin that implements it receives
every event through it instead of the per-type hooks, so it cannot live in the probe.
Records each run it is handed (event types and ids) to the file of its ``record``
setting, if set, like the probe."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from lightningd_py import api

api.require("1.0")

__all__ = ["BulkSettings", "ldp_config_schema", "ldp_event_batch"]


class BulkSettings(api.PluginSettings):
    record: Path | None = None


@api.hookimpl
def ldp_config_schema() -> type[api.PluginSettings]:
    return BulkSettings


@api.hookimpl
async def ldp_event_batch(daemon: api.Daemon, events: Sequence[api.Event]) -> None:
    settings = daemon.settings
    assert isinstance(settings, BulkSettings)
    if settings.record is None:
        return
    with settings.record.open("a") as fh:
        line = {"hook": "ldp_event_batch", "types": [e.type for e in events], "ids": [e.id for e in events]}
        fh.write(json.dumps(line) + "\n")
