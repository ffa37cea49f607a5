"""lightningd-py: a plugin daemon beside LND."""

import sys as _sys

from .hookspecs import hookimpl

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
