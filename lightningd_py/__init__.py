"""lightningd-py: a plugin daemon beside LND."""

import os as _os
import sys as _sys


def _use_grpc_iomgr_client() -> None:
    # gRPC's EventEngine client (grpcio's default) wakes its poller with a write(2) on
    # every message read, from the reading thread and with the GIL held. Draining a burst
    # of 20,000 settlements off LND's invoice and HTLC-event streams took 2.7-2.8 s of
    # CPU with the older iomgr client and 3.9-4.8 s with EventEngine's, and the raw drain
    # rose from 6,600-6,900 to 10,300 settlements/s. gRPC reads its experiments once, when
    # it is first imported, so this runs before anything here imports it; an operator's
    # own GRPC_EXPERIMENTS naming this experiment wins.
    current = _os.environ.get("GRPC_EXPERIMENTS", "")
    named = {name.strip().lstrip("-") for name in current.split(",")}
    if "event_engine_client" not in named:
        _os.environ["GRPC_EXPERIMENTS"] = ",".join(filter(None, (current, "-event_engine_client")))


_use_grpc_iomgr_client()

from .hookspecs import hookimpl  # noqa: E402

__all__ = ["API_VERSION", "__version__", "hookimpl"]

__version__ = "0.1.0"
# The version of the plugin API (lightningd_py.api); plugins may require a minimum.
API_VERSION = (1, 0)


def _import_structlog_without_rich() -> None:
    # structlog imports rich (and with it pygments) whenever it is installed, for console
    # tracebacks the daemon never prints: it prints plain ones, since rich's show every
    # frame's locals, secrets included. Hidden while structlog is first imported, rich
    # costs nothing (about 4 MB resident otherwise) and stays importable for others.
    if "structlog" in _sys.modules or "rich" in _sys.modules:
        return
    _sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        del _sys.modules["rich"]


_import_structlog_without_rich()
