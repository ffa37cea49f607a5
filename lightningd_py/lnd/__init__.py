"""The daemon's side of LND: credentials, the connection (``LndLink``), typed calls
(``LndClient``) and the plain types they return.

Names are imported lazily so that importing ``lightningd_py.lnd.rpc`` (e.g. by simnet)
does not pull in the link and client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import LndClient
    from .credentials import LndCredentials, load_credentials, parse_lndconnect
    from .errors import classify
    from .link import LndLink, Stubs

__all__ = [
    "LndClient",
    "LndCredentials",
    "LndLink",
    "Stubs",
    "classify",
    "load_credentials",
    "parse_lndconnect",
]

_WHERE = {
    "LndClient": ".client",
    "LndCredentials": ".credentials",
    "load_credentials": ".credentials",
    "parse_lndconnect": ".credentials",
    "classify": ".errors",
    "LndLink": ".link",
    "Stubs": ".link",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
