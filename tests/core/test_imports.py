"""What a fresh daemon process loads, and what it leaves until needed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("rich") is None, reason="needs rich installed")
def test_the_daemon_does_not_load_rich_yet_leaves_it_importable() -> None:
    """structlog would import rich (and pygments) for tracebacks the daemon never
    prints; the daemon's process keeps them out, and other code can still import rich."""
    probe = (
        "import json, sys\n"
        "import lightningd_py.cli, lightningd_py.supervisor, structlog.dev\n"
        "loaded = sorted(m for m in ('rich', 'pygments') if m in sys.modules)\n"
        "structlog_rich = structlog.dev.rich is not None\n"
        "import rich.console\n"
        "print(json.dumps([loaded, structlog_rich]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [[], False]


def test_the_qr_code_library_is_loaded_only_when_a_qr_code_is_drawn() -> None:
    probe = (
        "import json, sys\n"
        "import lightningd_py.cli, lightningd_py.supervisor, lightningd_py.plugins.http_api\n"
        "print(json.dumps('segno' in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False
