"""The systemd unit: it verifies, its hardening keeps the exposure score under 2.0, and the
daemon works under the hardest of those restrictions (MemoryDenyWriteExecute)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "lightningd-py.service"
INSTALLED_EXEC = "/opt/lightningd-py/bin/lightningd-py"


@pytest.fixture
def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        # CI installs systemd (.ci/run): a missing tool there is a broken check, not a skip.
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is not installed (apt-get install -y systemd)")
        pytest.skip("systemd-analyze is not installed")
    return tool


def _unit_copy(tmp_path: Path) -> Path:
    # verify checks that ExecStart is an executable on this machine; /opt/lightningd-py is
    # not installed here, so stand in this interpreter (the arguments are not run).
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED_EXEC, sys.executable))
    return copy


def test_unit_has_the_documented_settings():
    text = UNIT.read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "RestartSec": "5",
        "User": "lightningd-py",
        "Group": "lightningd-py",
        "StateDirectory": "lightningd-py",
        "ConfigurationDirectory": "lightningd-py",
        "ExecStart": f"{INSTALLED_EXEC} run --config /etc/lightningd-py/config.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "ProtectHome": "read-only",
        "MemoryDenyWriteExecute": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "IPAddressDeny": "any",
        "IPAddressAllow": "localhost",
        "UMask": "0077",
        "CapabilityBoundingSet": "",
    }
    assert {key: settings.get(key) for key in expected} == expected
    assert "lnd.service" in settings["After"] and "lnd.service" in settings["Wants"]


def test_systemd_analyze_verify(analyze, tmp_path):
    result = subprocess.run(
        [analyze, "verify", str(_unit_copy(tmp_path))], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # verify reports unknown or misspelled directives on stderr without failing.
    assert "Unknown" not in result.stderr and "unknown" not in result.stderr, result.stderr


def test_security_exposure_below_2(analyze, tmp_path):
    help_text = subprocess.run([analyze, "security", "--help"], capture_output=True, text=True).stdout
    if "--offline" not in help_text:
        pytest.skip("this systemd-analyze has no security --offline")
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(_unit_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) < 2.0, result.stdout


# Run the CLI with PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN) applied first: the kernel's
# MemoryDenyWriteExecute, the same check systemd installs (as a seccomp filter).
MDWE_LAUNCHER = (
    "import ctypes, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:\n"
    "    sys.exit('PR_SET_MDWE failed')\n"
    "from lightningd_py.cli import main\n"
    "sys.exit(main())\n"
)


def _mdwe_supported() -> bool:
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl(66, 0, 0, 0, 0) >= 0  # PR_GET_MDWE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_daemon_works_with_memory_deny_write_execute(ldp_daemon_factory):
    if not _mdwe_supported():
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    daemon = ldp_daemon_factory(launcher=[sys.executable, "-c", MDWE_LAUNCHER])

    def lnd_active() -> bool:
        request = urllib.request.Request(f"{daemon.api_url}/v1/health")
        request.add_header("Authorization", f"Bearer {daemon.tokens['readonly']}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 503 while not healthy still has the body
            body = json.loads(exc.read())
        return bool(body["lnd"].get("active"))

    # gRPC over TLS to simnet, sqlite and the HTTP server all ran under the restriction.
    daemon.wait_for(lnd_active, timeout=20)
    assert daemon.stop() == 0
