"""simnet: a simulated LND node speaking LND's gRPC API over TLS with macaroons.

Run it with `python -m lightningd_py.simnet --dir DIR` (or `lightningd-py simnet`), or in-process
with `Simnet(SimnetConfig(lnddir=...))`; drive it through the control API (`SimnetControl`).
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
