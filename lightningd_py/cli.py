"""The ``lightningd-py`` command: run | check-config | init | plugins | simnet | demo."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from . import __version__
from .config import CONFIG_ENV, DEFAULT_CONFIG_PATH, default_config_path
from .errors import ConfigError, PluginError

__all__ = [
    "BUILTIN_PLUGINS",
    "EXIT_CONFIG",
    "EXIT_PLUGIN",
    "TOKEN_ROLES",
    "bakemacaroon_command",
    "hash_tokens",
    "lnd_permissions",
    "main",
    "new_token",
    "new_tokens",
    "new_webhook_secret",
    "token_sha256",
]

EXIT_CONFIG = 2
EXIT_PLUGIN = 3
TOKEN_ROLES = ("admin", "invoice", "readonly")
BUILTIN_PLUGINS = ("invoice_tracker", "http_api", "webhooks", "metrics", "rebalancer")
NETWORKS = ("mainnet", "testnet", "signet", "regtest")
MACAROON_NAME = "lightningd-py.macaroon"

# LND permissions the core needs for its streams and reconciliation (GetInfo, invoice
# and channel/payment/forward streams, ListPeers, WalletBalance/EstimateFee), and what
# each built-in plugin adds: the API creates invoices, pays, and opens and closes
# channels (OpenChannel/CloseChannel need onchain:write); the rebalancer pays circular
# routes and sets channel policies.
CORE_PERMISSIONS = ("info:read", "invoices:read", "offchain:read", "onchain:read", "peers:read")
PLUGIN_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "http_api": ("invoices:write", "offchain:write", "onchain:write"),
    "rebalancer": ("offchain:write",),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    # simnet has its own parser: hand it every argument untouched.
    if args[:1] == ["simnet"]:
        from .simnet import main as simnet_main

        return int(simnet_main(args[1:]) or 0)
    parser = _parser()
    ns = parser.parse_args(args)
    if ns.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    return int(ns.func(ns))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightningd-py",
        description="A plugin daemon beside LND: invoices, webhooks, metrics, rebalancing, one HTTP API.",
    )
    parser.add_argument("--version", action="version", version=f"lightningd-py {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    config_help = f"config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG_PATH})"

    run = sub.add_parser("run", help="run the daemon (systemd's ExecStart)")
    run.add_argument("--config", type=Path, help=config_help)
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser(
        "check-config", help="validate the config and every plugin's table; exit 2 if invalid"
    )
    check.add_argument("--config", type=Path, help=config_help)
    check.set_defaults(func=_cmd_check_config)

    init = sub.add_parser("init", help="write a starter config for an LND node, with new API tokens")
    init.add_argument("--lnddir", type=Path, required=True, help="LND's directory (holds tls.cert and data/)")
    init.add_argument("--network", choices=NETWORKS, default="mainnet")
    init.add_argument("--host", default="127.0.0.1:10009", help="LND's gRPC host:port")
    init.add_argument("--out", type=Path, help=f"where to write the config (default: {DEFAULT_CONFIG_PATH})")
    init.add_argument("--state-dir", type=Path, default=Path("/var/lib/lightningd-py"))
    init.add_argument("--api-listen", default="127.0.0.1:8080", help="the HTTP API's host:port")
    init.add_argument("--webhook-url", help="add a webhook endpoint receiving every event")
    init.add_argument(
        "--disable", action="append", default=[], choices=BUILTIN_PLUGINS, metavar="PLUGIN",
        help="leave a built-in plugin disabled (repeatable)",
    )  # fmt: skip
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=_cmd_init)

    plugins = sub.add_parser("plugins", help="list installed plugins")
    plugins.add_argument("--config", type=Path, help=config_help)
    plugins.add_argument("--json", action="store_true", help="one JSON document")
    plugins.set_defaults(func=_cmd_plugins)

    sub.add_parser(
        "simnet", help="run a simulated LND node (see `lightningd-py simnet --help`)", add_help=False
    )

    demo = sub.add_parser("demo", help="simnet + daemon + live activity, on this machine")
    demo.add_argument("--dir", type=Path, help="keep the demo's files here (default: a new temporary dir)")
    demo.add_argument(
        "--interval", type=float, default=3.0, help="mean seconds between payments (default: 3)"
    )
    demo.add_argument("--api-port", type=int, default=8080, help="HTTP API port if free (0: any free port)")
    demo.add_argument(
        "--metrics-port", type=int, default=9108, help="metrics port if free (0: any free port)"
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


# ---------------------------------------------------------------- run / check / plugins


def _cmd_run(ns: argparse.Namespace) -> int:
    from .supervisor import main as supervisor_main

    return supervisor_main(ns.config or default_config_path())


def _cmd_check_config(ns: argparse.Namespace) -> int:
    # The same loading and plugin-failure policy as `run`, so the verdict predicts it.
    from .supervisor import load

    path = (ns.config or default_config_path()).expanduser().absolute()
    try:
        load(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except PluginError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return EXIT_PLUGIN
    print(f"config OK: {path}")
    return 0


def _cmd_plugins(ns: argparse.Namespace) -> int:
    from .config import load_config
    from .pluginhost import create_plugin_manager, describe_plugins, plugin_schemas

    pm = create_plugin_manager()
    path = (ns.config or default_config_path()).expanduser()
    config = None
    if ns.config is not None or path.exists():
        try:
            unavailable = {f.name: f.reason for f in pm.failures}
            config = load_config(path, plugin_schemas(pm), unavailable=unavailable)
        except ConfigError as exc:
            # Listing still helps while fixing the config; enabled shows the defaults.
            print(f"note: enabled shows defaults, the config did not load:\n{exc}", file=sys.stderr)
    rows = describe_plugins(pm, config)
    if ns.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("NAME", "VERSION", "ORIGIN", "ENABLED", "HOOKS")
    table = [
        (
            r["name"],
            r.get("version") or "-",
            r.get("origin") or "-",
            "yes" if r.get("enabled") else "no",
            ", ".join(r.get("hooks", [])) or ("error: " + r["error"] if r.get("error") else "-"),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(4)]
    for row in [header, *table]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    return 0


def _cmd_demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(ns.dir, ns.interval, api_port=ns.api_port, metrics_port=ns.metrics_port)


# ---------------------------------------------------------------- init


def new_token() -> str:
    """A new API bearer token (shown once, stored only as its SHA-256)."""
    return secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    """What the config stores for a token: its SHA-256 in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_tokens() -> dict[str, str]:
    """A new token for each role (admin, invoice, readonly)."""
    return {role: new_token() for role in TOKEN_ROLES}


def hash_tokens(tokens: Mapping[str, str]) -> dict[str, str]:
    """``{role: token}`` -> ``{role: sha256}``, what ``[plugins.http_api] tokens`` holds."""
    return {role: token_sha256(token) for role, token in tokens.items()}


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def lnd_permissions(enabled: Sequence[str]) -> list[str]:
    """The LND macaroon permissions the core and the given built-in plugins need."""
    perms = set(CORE_PERMISSIONS)
    for name in enabled:
        perms.update(PLUGIN_PERMISSIONS.get(name, ()))
    # LND's own order: entity, then read before write.
    return sorted(perms, key=lambda p: (p.split(":")[0], p.split(":")[1] != "read"))


def bakemacaroon_command(
    enabled: Sequence[str], save_to: Path | str, *, lnddir: Path | None = None, network: str = "mainnet"
) -> str:
    """The ``lncli bakemacaroon`` line for a least-privilege macaroon."""
    parts = ["lncli"]
    if lnddir is not None and lnddir.expanduser() != Path("~/.lnd").expanduser():
        parts.append(f"--lnddir {lnddir}")
    if network != "mainnet":
        parts.append(f"--network {network}")
    parts += ["bakemacaroon", *lnd_permissions(enabled), f"--save_to {save_to}"]
    return " ".join(parts)


def _cmd_init(ns: argparse.Namespace) -> int:
    from .config import split_host_port, write_private_file

    out: Path = (ns.out or default_config_path()).expanduser().absolute()
    for option, value in (("--host", ns.host), ("--api-listen", ns.api_listen)):
        try:
            split_host_port(value)
        except ValueError as exc:
            print(f"lightningd-py init: {option}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    if ns.webhook_url is not None and not ns.webhook_url.startswith(("http://", "https://")):
        print("lightningd-py init: --webhook-url: not an http(s) URL", file=sys.stderr)
        return EXIT_CONFIG
    if out.exists() and not ns.force:
        print(f"lightningd-py init: {out} exists; use --force to overwrite it", file=sys.stderr)
        return EXIT_CONFIG

    lnddir = ns.lnddir.expanduser().absolute()
    macaroon_dir = lnddir / "data" / "chain" / "bitcoin" / ns.network
    tls_cert = lnddir / "tls.cert"
    baked = macaroon_dir / MACAROON_NAME
    admin = macaroon_dir / "admin.macaroon"
    macaroon = baked if baked.exists() or not admin.exists() else admin
    enabled = [name for name in BUILTIN_PLUGINS if name not in ns.disable]

    tokens = new_tokens()
    webhook_secret = new_webhook_secret()
    config: dict[str, Any] = {
        "core": {"state_dir": str(ns.state_dir.expanduser())},
        "lnd": {"host": ns.host, "tls_cert": str(tls_cert), "macaroon": str(macaroon)},
        "plugins": {name: {"enabled": name in enabled} for name in BUILTIN_PLUGINS},
    }
    config["plugins"]["http_api"].update(
        listen=ns.api_listen,
        tokens=[{"name": role, "role": role, "sha256": sha} for role, sha in hash_tokens(tokens).items()],
    )
    endpoint = {"name": "default", "url": ns.webhook_url, "events": ["*"], "secret": webhook_secret}
    if ns.webhook_url is not None:
        config["plugins"]["webhooks"]["endpoints"] = [endpoint]
    text = f"# Written by `lightningd-py init`; every option: config.toml.example\n{tomli_w.dumps(config)}"
    if ns.webhook_url is None:
        # No receiver yet: keep the generated secret next to an example endpoint.
        example = tomli_w.dumps(
            {"plugins": {"webhooks": {"endpoints": [{**endpoint, "url": "https://..."}]}}}
        )
        lines = [line for line in example.splitlines() if line.strip()]
        text += "\n# A webhook endpoint (uncomment and set url):\n" + "".join(f"# {line}\n" for line in lines)

    write_private_file(out, text.encode())  # 0600: it holds the webhook secret

    print(f"wrote {out}")
    print("\nAPI tokens (shown once; the config stores only their SHA-256):")
    for role, token in tokens.items():
        print(f"  {role:<9} {token}")
    print(f"\nwebhook signing secret (Standard Webhooks): {webhook_secret}")
    if not tls_cert.exists():
        print(f"\nwarning: {tls_cert} does not exist yet (is --lnddir right?)")
    print("\nLeast-privilege macaroon for the enabled plugins:")
    print(f"  {bakemacaroon_command(enabled, baked, lnddir=lnddir, network=ns.network)}")
    if macaroon == admin:
        print(f"The config uses {admin} until then: bake the macaroon above and set lnd.macaroon to {baked}.")
    elif not baked.exists():
        print(f"The config expects {baked}: bake it with the line above.")
    print(f"\nThen: lightningd-py check-config --config {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
