"""simnet: a simulated LND node speaking LND's gRPC API over TLS with macaroons.

Run it as a process::

    python -m lightningd_py.simnet --dir DIR [--grpc-port 0] [--control-port 0]
        [--channels N] [--peers N] [--locked] [--seed S] [--confirm-delay SECONDS]
    # or: lightningd-py simnet --dir DIR ...

It prints one JSON line once both servers accept connections::

    {"grpc": "127.0.0.1:PORT", "control": "http://127.0.0.1:PORT", "tls_cert": ".../tls.cert",
     "admin_macaroon": ".../data/chain/bitcoin/regtest/admin.macaroon", "invoice_macaroon": ...,
     "readonly_macaroon": ..., "lnddir": DIR, "network": "regtest"}

and runs until SIGTERM/SIGINT. In-process: ``async with Simnet(SimnetConfig(lnddir=...)) as sim``
(``sim.info()`` is the same dict), or ``await serve(config)``.

Services: lnrpc.Lightning, routerrpc.Router, invoicesrpc.Invoices, lnrpc.State (the methods in
protos/). Every call but State's needs a "macaroon" metadata entry (hex) and is checked against
LND's entity:action permissions; refusals are status UNKNOWN with LND's texts.

The control API (JSON over HTTP, see control_api.ROUTES; clients in control.py) does what the
outside world does to a node: pay invoices (``/invoices/settle``, ``/invoices/burst``), delete
a canceled one (``/invoices/delete``, as ``lncli deletecanceledinvoice``), issue a
peer's invoice (``/external-invoice``), open/close channels, set balances, take peers or
channels offline, forward HTLCs (``/forwards``), make the next payment fail, mine blocks, lock,
unlock and restart, and hold a unary RPC's calls until released (``/calls/hold``,
``/calls/release``). ``GET /state`` summarises the node, with every channel's ids and balances.
"""

from lightningd_py.simnet.control import AsyncSimnetControl, SimnetControl, SimnetControlError
from lightningd_py.simnet.run import main, serve
from lightningd_py.simnet.server import Simnet, SimnetConfig

__all__ = [
    "AsyncSimnetControl",
    "Simnet",
    "SimnetConfig",
    "SimnetControl",
    "SimnetControlError",
    "main",
    "serve",
]
