"""Regenerate lightningd_py/lnd/rpc/ from the .proto files in protos/.

Runs grpc_tools.protoc (grpcio-tools, pinned in the ``test`` extra so the output is
reproducible) to produce ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py``, flattens
``routerrpc/`` and ``invoicesrpc/`` into one package and rewrites the generated
top-level imports (``import lightning_pb2``) into package-relative ones, so the
code works as ``lightningd_py.lnd.rpc`` without touching ``sys.path``.

Usage::

    python scripts/gen_protos.py                 # rewrite lightningd_py/lnd/rpc/
    python scripts/gen_protos.py --out-dir DIR   # write elsewhere (staleness test)
"""

from __future__ import annotations

import argparse
import importlib.resources
import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

__all__ = ["GENERATED_SUFFIXES", "PROTO_FILES", "PROTO_ROOT", "RPC_PACKAGE", "generate", "main"]

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
RPC_DIR = REPO_ROOT / "lightningd_py" / "lnd" / "rpc"
RPC_PACKAGE = "lightningd_py.lnd.rpc"

# Paths relative to protos/, laid out as in LND's lnrpc/ so that import paths and the
# file names recorded in the descriptors are the ones LND uses.
PROTO_FILES = (
    "lightning.proto",
    "stateservice.proto",
    "routerrpc/router.proto",
    "invoicesrpc/invoices.proto",
)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

_OUR_MODULES = frozenset(Path(p).stem + "_pb2" for p in PROTO_FILES)
_IMPORT = re.compile(r"^import (?P<mod>\w+) as (?P<alias>\w+)$", re.MULTILINE)
_FROM_IMPORT = re.compile(r"^from (?P<pkg>[\w.]+) import (?P<mod>\w+) as (?P<alias>\w+)$", re.MULTILINE)
_BUILD_MODULE = re.compile(r"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, )'[\w.]+'")


def _rewrite(text: str, module: str) -> str:
    """Make imports of our own generated modules package-relative."""

    def plain(match: re.Match[str]) -> str:
        if match["mod"] not in _OUR_MODULES:
            return match[0]
        return f"from . import {match['mod']} as {match['alias']}"

    def dotted(match: re.Match[str]) -> str:
        # Only the proto sub-directories (routerrpc, invoicesrpc) are flattened; never
        # touch google.protobuf or grpc imports.
        if match["mod"] not in _OUR_MODULES or match["pkg"].startswith(("google", "grpc")):
            return match[0]
        return f"from . import {match['mod']} as {match['alias']}"

    text = _IMPORT.sub(plain, text)
    text = _FROM_IMPORT.sub(dotted, text)
    # Classes get __module__ from this name; give them the module they really live in.
    return _BUILD_MODULE.sub(rf"\g<1>'{RPC_PACKAGE}.{module}'", text)


def _run_protoc(proto_root: Path, build_dir: Path) -> None:
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={proto_root}",
        f"--proto_path={well_known}",
        f"--python_out={build_dir}",
        f"--pyi_out={build_dir}",
        f"--grpc_python_out={build_dir}",
        *PROTO_FILES,
    ]
    status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc failed with exit status {status} (see messages above)")


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Generate the Python modules for ``proto_root`` into ``out_dir``.

    Generated files already in ``out_dir`` that are no longer produced are removed;
    other files (``__init__.py``) are left alone. Returns the written paths, sorted.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="ldp-protos-") as tmp:
        build_dir = Path(tmp)
        _run_protoc(proto_root, build_dir)
        produced = sorted(
            p for p in build_dir.rglob("*") if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
        )
        names = [p.name for p in produced]
        if len(set(names)) != len(names):
            raise RuntimeError(f"flattening would overwrite a module: {sorted(names)}")
        for src in produced:
            module = src.name.split(".", 1)[0]
            dest = out_dir / src.name
            dest.write_text(_rewrite(src.read_text(encoding="utf-8"), module), encoding="utf-8")
            written.append(dest)
    keep = {p.name for p in written}
    for old in out_dir.iterdir():
        if old.name.endswith(GENERATED_SUFFIXES) and old.name not in keep:
            old.unlink()
    return sorted(written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir", type=Path, default=RPC_DIR, help=f"output directory (default: {RPC_DIR})"
    )
    args = parser.parse_args(argv)
    for path in generate(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
