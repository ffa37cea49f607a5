"""The ``lightningd-py`` command: check-config exit codes, init's output and files."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from lightningd_py import __version__
from lightningd_py.cli import bakemacaroon_command, lnd_permissions, main, new_webhook_secret
from lightningd_py.demo import wait_for

ALL_PERMISSIONS = (
    "info:read invoices:read invoices:write offchain:read offchain:write "
    "onchain:read onchain:write peers:read"
)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lightningd_py.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def lnddir(tmp_path: Path) -> Path:
    """A directory laid out like LND's (tls.cert, regtest macaroons)."""
    root = tmp_path / "lnd"
    macaroons = root / "data" / "chain" / "bitcoin" / "regtest"
    macaroons.mkdir(parents=True)
    (root / "tls.cert").write_text("-----BEGIN CERTIFICATE-----\n")
    (macaroons / "admin.macaroon").write_bytes(b"\x02\x01")
    return root


@pytest.fixture
def valid_config(tmp_path: Path, lnddir: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[core]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[lnd]\ntls_cert = "{lnddir / "tls.cert"}"\n'
        f'macaroon = "{lnddir / "data/chain/bitcoin/regtest/admin.macaroon"}"\n'
    )
    return path


# ---------------------------------------------------------------- check-config


def test_check_config_ok(valid_config):
    result = run_cli("check-config", "--config", str(valid_config))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"config OK: {valid_config}\n", "")


def test_check_config_reads_the_environment_variable(valid_config):
    result = run_cli("check-config", env={"LIGHTNINGD_PY_CONFIG": str(valid_config)})
    assert (result.returncode, result.stdout) == (0, f"config OK: {valid_config}\n")


def test_check_config_reports_every_problem_and_exits_2(valid_config):
    text = valid_config.read_text().replace("[lnd]\n", "[lnd]\nkeepalive_interval = 1\nkeepalive = 30\n")
    valid_config.write_text(text + "[plugins.webhook]\n")
    result = run_cli("check-config", "--config", str(valid_config))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{valid_config}: invalid configuration",
        "  lnd.keepalive_interval: must be >= 10 (LND closes connections that ping more often than "
        "every 5 s)",
        "  lnd.keepalive: unknown key; did you mean 'keepalive_interval'?",
        "  plugins.webhook: no such plugin; did you mean 'webhooks'?",
    ]


def test_check_config_syntax_error(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[core]\nlog_level = loud\n")
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr == (
        f"{path}: invalid configuration\n  TOML syntax error at line 2, column 13: invalid value\n"
    )


def test_check_config_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    result = run_cli("check-config", "--config", str(path))
    assert (result.returncode, result.stderr) == (2, f"{path}: invalid configuration\n  file not found\n")


# ---------------------------------------------------------------- init


def _init(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["init", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_init_writes_a_private_config_and_prints_tokens_once(capsys, tmp_path, lnddir):
    out_path = tmp_path / "etc" / "config.toml"
    code, out, err = _init(
        capsys, "--lnddir", str(lnddir), "--network", "regtest", "--out", str(out_path),
        "--state-dir", str(tmp_path / "state"), "--host", "127.0.0.1:10019",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert stat.S_IMODE(out_path.stat().st_mode) == 0o600
    text = out_path.read_text()
    data = tomllib.loads(text)

    tokens = dict(re.findall(r"^  (admin|invoice|readonly) +(\S+)$", out, re.M))
    assert set(tokens) == {"admin", "invoice", "readonly"}
    for token in tokens.values():
        assert out.count(token) == 1, "each token is printed exactly once"
        assert token not in text, "only hashes are stored"
        assert len(token) >= 40
    assert data["plugins"]["http_api"]["tokens"] == [
        {"name": role, "role": role, "sha256": hashlib.sha256(tokens[role].encode()).hexdigest()}
        for role in ("admin", "invoice", "readonly")
    ]

    macaroons = lnddir / "data" / "chain" / "bitcoin" / "regtest"
    assert data["core"] == {"state_dir": str(tmp_path / "state")}
    assert data["lnd"] == {
        "host": "127.0.0.1:10019",
        "tls_cert": str(lnddir / "tls.cert"),
        "macaroon": str(macaroons / "admin.macaroon"),  # until the baked one exists
    }
    assert {name: table["enabled"] for name, table in data["plugins"].items()} == {
        "invoice_tracker": True, "http_api": True, "webhooks": True, "metrics": True, "rebalancer": True,
    }  # fmt: skip

    secret = re.search(r"webhook signing secret \(Standard Webhooks\): (whsec_\S+)", out).group(1)
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 24
    assert f'# secret = "{secret}"' in text  # kept beside the commented example endpoint

    bake = (
        f"lncli --lnddir {lnddir} --network regtest bakemacaroon {ALL_PERMISSIONS} "
        f"--save_to {macaroons / 'lightningd-py.macaroon'}"
    )
    assert f"\n  {bake}\n" in out
    assert f"set lnd.macaroon to {macaroons / 'lightningd-py.macaroon'}" in out


def test_init_output_passes_check_config(capsys, tmp_path, lnddir):
    out_path = tmp_path / "config.toml"
    code, _, _ = _init(
        capsys, "--lnddir", str(lnddir), "--network", "regtest", "--out", str(out_path),
        "--state-dir", str(tmp_path / "state"), "--webhook-url", "https://backend.example/hooks",
    )  # fmt: skip
    assert code == 0
    endpoint = tomllib.loads(out_path.read_text())["plugins"]["webhooks"]["endpoints"][0]
    assert endpoint["url"] == "https://backend.example/hooks" and endpoint["secret"].startswith("whsec_")
    result = run_cli("check-config", "--config", str(out_path))
    assert (result.returncode, result.stderr) == (0, "")


def test_init_prefers_a_baked_macaroon(capsys, tmp_path, lnddir):
    baked = lnddir / "data" / "chain" / "bitcoin" / "regtest" / "lightningd-py.macaroon"
    baked.write_bytes(b"\x02")
    out_path = tmp_path / "config.toml"
    code, out, _ = _init(capsys, "--lnddir", str(lnddir), "--network", "regtest", "--out", str(out_path))
    assert code == 0
    assert tomllib.loads(out_path.read_text())["lnd"]["macaroon"] == str(baked)
    assert "set lnd.macaroon" not in out


def test_init_refuses_to_overwrite_without_force(capsys, tmp_path, lnddir):
    out_path = tmp_path / "config.toml"
    out_path.write_text("# mine\n")
    code, out, err = _init(capsys, "--lnddir", str(lnddir), "--out", str(out_path))
    assert (code, out) == (2, "")
    assert err == f"lightningd-py init: {out_path} exists; use --force to overwrite it\n"
    assert out_path.read_text() == "# mine\n"
    code, out, _ = _init(capsys, "--lnddir", str(lnddir), "--out", str(out_path), "--force")
    assert code == 0 and out_path.read_text() != "# mine\n"


def test_init_rejects_bad_addresses(capsys, tmp_path, lnddir):
    code, _, err = _init(capsys, "--lnddir", str(lnddir), "--out", str(tmp_path / "c.toml"), "--host", "lnd")
    assert code == 2
    assert err == "lightningd-py init: --host: expected host:port, e.g. 127.0.0.1:10009 or [::1]:10009\n"
    assert not (tmp_path / "c.toml").exists()


def test_least_privilege_permissions_follow_the_enabled_plugins():
    builtins = ["invoice_tracker", "http_api", "webhooks", "metrics", "rebalancer"]
    assert " ".join(lnd_permissions(builtins)) == ALL_PERMISSIONS
    assert lnd_permissions(["invoice_tracker", "webhooks", "metrics"]) == [
        "info:read", "invoices:read", "offchain:read", "onchain:read", "peers:read",
    ]  # fmt: skip
    assert lnd_permissions(["rebalancer"]) == [
        "info:read", "invoices:read", "offchain:read", "offchain:write", "onchain:read", "peers:read",
    ]  # fmt: skip
    assert bakemacaroon_command(builtins, "lightningd-py.macaroon") == (
        f"lncli bakemacaroon {ALL_PERMISSIONS} --save_to lightningd-py.macaroon"
    )


def test_webhook_secrets_are_fresh():
    first, second = new_webhook_secret(), new_webhook_secret()
    assert first != second and first.startswith("whsec_")


# ---------------------------------------------------------------- plugins, misc


def test_plugins_lists_the_built_ins(valid_config):
    valid_config.write_text(valid_config.read_text() + "[plugins.rebalancer]\nenabled = false\n")
    result = run_cli("plugins", "--config", str(valid_config), "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"invoice_tracker", "http_api", "webhooks", "metrics", "rebalancer"} <= set(rows)
    assert rows["rebalancer"]["enabled"] is False and rows["http_api"]["enabled"] is True
    assert rows["http_api"]["origin"] == "built-in"
    assert "ldp_register_routes" in rows["http_api"]["hooks"]
    table = run_cli("plugins", "--config", str(valid_config))
    assert table.stdout.splitlines()[0].split() == ["NAME", "VERSION", "ORIGIN", "ENABLED", "HOOKS"]


def test_version_and_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"lightningd-py {__version__}\n"
    assert main([]) == 2
    assert "check-config" in capsys.readouterr().err


def test_simnet_arguments_pass_through():
    result = run_cli("simnet", "--help")
    assert result.returncode == 0
    assert "--dir" in result.stdout


# ---------------------------------------------------------------- run (as systemd starts it)


def test_run_notifies_ready_and_stops_on_sigterm(ldp_daemon):
    assert "READY=1" in ldp_daemon.notifications
    assert ldp_daemon.stop() == 0
    assert "STOPPING=1" in ldp_daemon.notifications


def test_run_reloads_on_sighup(ldp_daemon):
    mark = len(ldp_daemon.notifications)
    ldp_daemon.signal(signal.SIGHUP)
    ldp_daemon.wait_notification("RELOADING=1", after=mark)
    ldp_daemon.wait_notification("READY=1", after=mark)
    assert ldp_daemon.returncode is None


def test_run_refuses_a_bad_config_with_exit_2(ldp_config_factory, ldp_daemon_factory):
    config = ldp_config_factory(lnd={"keepalive_interval": 1})
    with pytest.raises(RuntimeError, match="exited with 2 before READY=1") as info:
        ldp_daemon_factory(config)
    assert "lnd.keepalive_interval: must be >= 10" in str(info.value)


# ---------------------------------------------------------------- demo


def test_demo_shows_live_activity_and_stops_cleanly_on_sigterm(tmp_path):
    args = ["demo", "--dir", str(tmp_path), "--interval", "0.3", "--api-port", "0", "--metrics-port", "0"]
    demo = subprocess.Popen(
        [sys.executable, "-m", "lightningd_py.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        wait_for(
            lambda: (
                sum("  paid " in line for line in lines) >= 2 and any("webhook " in line for line in lines)
            ),
            timeout=60,
        )
    except TimeoutError:
        pytest.fail("no payments or webhooks within 60 s:\n" + "".join(lines))
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(30)
        reader.join(5)
    output = "".join(lines)
    assert demo.returncode == 0, output
    assert "Authorization: Bearer" in output and "/metrics" in output
    assert "activity  failed" not in output, output
    assert output.rstrip().endswith(f"demo stopped; its files are in {tmp_path}")
    # Everything it started is gone: simnet's and the daemon's ports are closed.
    config = tomllib.loads((tmp_path / "config.toml").read_text())
    for address in (config["lnd"]["host"], config["plugins"]["http_api"]["listen"]):
        host, _, port = address.rpartition(":")
        with socket.socket() as sock:
            assert sock.connect_ex((host, int(port))) != 0, f"{address} still open"
