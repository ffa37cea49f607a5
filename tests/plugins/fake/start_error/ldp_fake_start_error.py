"""A plugin that imports fine and fails in ``ldp_startup``."""

from __future__ import annotations

from lightningd_py import api

api.require("1.0")

__all__ = ["ldp_startup"]


@api.hookimpl
def ldp_startup(daemon: api.Daemon) -> None:
    raise RuntimeError("the loyalty ledger at /nonexistent is not writable")
