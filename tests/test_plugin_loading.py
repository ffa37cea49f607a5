"""Loading third-party plugins: failures are reported with the plugin's name and the
reason, and ``[core] plugin_failure`` decides between refusing to start (the default)
and starting without the plugin. ``lightningd-py plugins`` lists what is installed.

The fake plugins in tests/plugins/fake/ are installed for the daemon process by putting
their directory (a module plus a ``*.dist-info`` with ``entry_points.txt``) on its
PYTHONPATH, which is how ``importlib.metadata`` finds entry points of real packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lightningd_py import API_VERSION, api, hookspecs
from lightningd_py.errors import PluginError

FAKE = Path(__file__).parent / "plugins" / "fake"
EXIT_PLUGIN = 3
HOOKS = sorted(name for name in vars(hookspecs) if name.startswith("ldp_"))


def site_env(*names: str) -> dict[str, str]:
    """PYTHONPATH installing the fake plugins ``names`` (directories of tests/plugins/fake)."""
    paths = [str(FAKE / n) for n in names]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {"PYTHONPATH": os.pathsep.join(paths)}


def json_logs(daemon: Any) -> list[dict[str, Any]]:
    """The daemon's JSON log lines, once it logged "ready" (sent right after READY=1)."""
    daemon.wait_for(lambda: '"event": "ready"' in daemon.logs(), timeout=10)
    return [json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lightningd_py.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


# ---------------------------------------------------------------- failures at load


def test_import_failure_refuses_to_start_naming_plugin_and_reason(ldp_daemon_factory) -> None:
    with pytest.raises(RuntimeError, match=f"exited with {EXIT_PLUGIN}") as info:
        ldp_daemon_factory(env=site_env("import_error"), timeout=15)
    message = str(info.value)
    assert "plugin 'import_error': import failed: ModuleNotFoundError" in message
    assert "ldp_fake_dependency_that_is_not_installed" in message
    assert 'plugin_failure = "skip"' in message  # says how to start without it


def test_import_failure_with_skip_starts_without_the_plugin(ldp_daemon_factory) -> None:
    daemon = ldp_daemon_factory(
        core={"plugin_failure": "skip"}, env=site_env("import_error", "probe"), plugins=probe_table(None)
    )
    logs = json_logs(daemon)
    skipped = [e for e in logs if e.get("event") == "plugin not loaded; starting without it"]
    assert [(e["plugin"], "ModuleNotFoundError" in e["reason"]) for e in skipped] == [("import_error", True)]
    ready = next(e for e in logs if e.get("event") == "ready")
    assert "import_error" not in ready["plugins"] and "probe" in ready["plugins"]


def test_a_disabled_plugin_that_fails_to_load_does_not_stop_the_daemon(ldp_daemon_factory) -> None:
    # Its table is accepted unvalidated (the plugin cannot say what it takes).
    daemon = ldp_daemon_factory(
        env=site_env("import_error"), plugins={"import_error": {"enabled": False, "anything": 1}}
    )
    assert "READY=1" in daemon.notifications


def test_api_require_too_new_is_a_load_failure_naming_both_versions(ldp_daemon_factory) -> None:
    have = ".".join(map(str, API_VERSION))
    with pytest.raises(RuntimeError, match=f"exited with {EXIT_PLUGIN}") as info:
        ldp_daemon_factory(env=site_env("too_new"), timeout=15)
    assert f"needs lightningd-py plugin API 1.99, this daemon offers {have}" in str(info.value)
    assert "plugin 'too_new'" in str(info.value)

    daemon = ldp_daemon_factory(core={"plugin_failure": "skip"}, env=site_env("too_new"))
    assert "needs lightningd-py plugin API 1.99" in daemon.logs()


def test_api_require() -> None:
    major, minor = API_VERSION
    api.require(f"{major}.{minor}")
    api.require(str(major))
    with pytest.raises(PluginError, match=rf"needs lightningd-py plugin API {major + 1}\.0, this daemon"):
        api.require(f"{major + 1}.0")
    with pytest.raises(PluginError, match=rf"plugin '{__name__}'"):
        api.require(f"{major}.{minor + 1}")
    with pytest.raises(ValueError, match="API version must look like"):
        api.require("one")


def test_a_misspelled_hook_is_a_load_failure_of_that_plugin(ldp_daemon_factory) -> None:
    with pytest.raises(RuntimeError, match=f"exited with {EXIT_PLUGIN}") as info:
        ldp_daemon_factory(env=site_env("typo"), timeout=15)
    assert "plugin 'typo': registration failed: unknown hook 'ldp_invoce_event'" in str(info.value)

    daemon = ldp_daemon_factory(core={"plugin_failure": "skip"}, env=site_env("typo"))
    skipped = [e for e in json_logs(daemon) if e.get("event") == "plugin not loaded; starting without it"]
    assert [e["plugin"] for e in skipped] == ["typo"]


# ---------------------------------------------------------------- failures at start


def test_startup_failure_refuses_to_start(ldp_daemon_factory) -> None:
    with pytest.raises(RuntimeError, match=f"exited with {EXIT_PLUGIN}") as info:
        ldp_daemon_factory(env=site_env("start_error"), timeout=15)
    reason = "RuntimeError: the loyalty ledger at /nonexistent is not writable"
    assert f"plugin 'start_error': startup failed: {reason}" in str(info.value)


def test_startup_failure_with_skip_disables_the_plugin(ldp_daemon_factory) -> None:
    daemon = ldp_daemon_factory(core={"plugin_failure": "skip"}, env=site_env("start_error"))
    logs = json_logs(daemon)
    failed = next(e for e in logs if e.get("event") == "plugin failed to start; disabled")
    assert failed["plugin"] == "start_error"
    assert "the loyalty ledger at /nonexistent is not writable" in json.dumps(failed["exception"])
    ready = next(e for e in logs if e.get("event") == "ready")
    assert "start_error" not in ready["plugins"]


# ---------------------------------------------------------------- lightningd-py plugins


def probe_table(record: Path | None) -> dict[str, dict[str, str]]:
    return {"probe": {"record": str(record or "/dev/null")}}


def test_plugins_command_shows_name_version_origin_enabled_and_hooks(ldp_config_factory) -> None:
    config = ldp_config_factory(plugins={**probe_table(None), "rebalancer": {"enabled": False}})
    env = site_env("probe", "import_error", "typo")
    result = cli("plugins", "--config", str(config.path), "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}

    probe = rows["probe"]
    assert (probe["version"], probe["origin"], probe["enabled"]) == ("1.2.3", "ldp-fake-probe", True)
    # A plugin with ldp_event_batch gets no per-type event hooks, so the probe has every
    # other hook and its companion has that one.
    assert probe["hooks"] == [h for h in HOOKS if h != "ldp_event_batch"]
    assert rows["probe_bulk"]["hooks"] == ["ldp_config_schema", "ldp_event_batch"]
    tracker = rows["invoice_tracker"]
    assert (tracker["origin"], tracker["enabled"]) == ("built-in", True)
    assert rows["rebalancer"]["enabled"] is False
    broken = rows["import_error"]
    assert (broken["version"], broken["origin"]) == ("0.0.1", "ldp-fake-import-error")
    assert broken["enabled"] is True and broken["hooks"] == []
    assert broken["error"].startswith("import failed: ModuleNotFoundError")
    typo = rows["typo"]
    assert (typo["version"], typo["origin"], typo["hooks"]) == ("0.0.4", "ldp-fake-typo", [])
    assert typo["error"] == (
        "registration failed: unknown hook 'ldp_invoce_event' (not in lightningd_py.hookspecs)"
    )

    table = cli("plugins", "--config", str(config.path), env=env).stdout.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "ORIGIN", "ENABLED", "HOOKS"]
    line = next(row for row in table if row.startswith("probe "))
    assert line.split()[:4] == ["probe", "1.2.3", "ldp-fake-probe", "yes"]
    assert "ldp_invoice_event" in line
    line = next(row for row in table if row.startswith("import_error "))
    assert line.split()[:4] == ["import_error", "0.0.1", "ldp-fake-import-error", "yes"]
    assert "error: import failed: ModuleNotFoundError" in line
    line = next(row for row in table if row.startswith("rebalancer "))
    assert line.split()[2:4] == ["built-in", "no"]


def test_check_config_reports_a_plugin_that_fails_to_load(ldp_config_factory) -> None:
    config = ldp_config_factory()
    result = cli("check-config", "--config", str(config.path), env=site_env("too_new"))
    assert result.returncode == EXIT_PLUGIN
    assert "plugin 'too_new'" in result.stderr and "needs lightningd-py plugin API 1.99" in result.stderr
