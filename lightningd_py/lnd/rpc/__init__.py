"""Generated protobuf and gRPC code for the subset of LND's API that lightningd-py uses.

Do not edit the ``*_pb2*`` modules: they are produced from ``protos/`` by
``scripts/gen_protos.py`` (``make protos``), and a test fails when they are stale.
Package, message and field names are LND's, so LND's API reference applies:

- ``lightning_pb2`` / ``lightning_pb2_grpc``: package ``lnrpc``, service ``Lightning``
- ``stateservice_pb2`` / ``stateservice_pb2_grpc``: package ``lnrpc``, service ``State``
- ``router_pb2`` / ``router_pb2_grpc``: package ``routerrpc``, service ``Router``
- ``invoices_pb2`` / ``invoices_pb2_grpc``: package ``invoicesrpc``, service ``Invoices``

Import the modules explicitly, e.g.
``from lightningd_py.lnd.rpc import lightning_pb2 as ln, lightning_pb2_grpc as lnrpc_grpc``.
Nothing outside ``lightningd_py.lnd`` and ``lightningd_py.simnet`` should need them.
"""

__all__ = [
    "invoices_pb2",
    "invoices_pb2_grpc",
    "lightning_pb2",
    "lightning_pb2_grpc",
    "router_pb2",
    "router_pb2_grpc",
    "stateservice_pb2",
    "stateservice_pb2_grpc",
]
