"""Property-based check of the API against its own OpenAPI document: schemathesis
generates requests for every operation (with an admin token) and checks that none
answers 5xx and that every response matches the documented schema."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_openapi_document_holds_under_generated_requests(ldp_daemon_factory, api_of, tmp_path: Path) -> None:
    daemon = ldp_daemon_factory(
        plugins={
            "http_api": {
                "rate_limits": {"general": "0", "channels": "0", "public": "0"},
                "max_wait_seconds": 0.2,
            }
        }
    )
    api_of(daemon)  # LND active
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.fail("schemathesis is a test dependency and must be installed")
    command = [
        cli,
        "run",
        f"{daemon.api_url}/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {daemon.tokens['admin']}",
        "--checks",
        "not_a_server_error,response_schema_conformance,content_type_conformance",
        "--max-examples",
        "15",
        "--phases",
        "examples,fuzzing",
        "--generation-deterministic",
        "--request-timeout",
        "10",
        "--exclude-path",
        "/v1/events",
        "--suppress-health-check",
        "all",
        "--no-color",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=170, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
