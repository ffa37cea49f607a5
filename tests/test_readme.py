"""README.md stays true: the two commands at its top, and every HTTP endpoint the running
daemon serves is listed with a curl example."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_top_commands() -> None:
    text = README.read_text()
    head = text[: text.index("## ")]
    assert "make demo" in head and "make test" in head


def test_every_endpoint_is_in_the_readme_with_curl(ldp_daemon) -> None:
    with urllib.request.urlopen(f"{ldp_daemon.api_url}/v1/openapi.json", timeout=10) as resp:
        doc = json.load(resp)
    text = README.read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([A-Z]+ /v1/[^`]+)` \|.*$", text, re.M)}
    served = {f"{method.upper()} {path}" for path, ops in doc["paths"].items() for method in ops}
    assert served - rows.keys() == set(), "endpoints missing from README.md"
    assert rows.keys() - served == set(), "README.md lists endpoints the daemon does not serve"
    for endpoint, row in rows.items():
        assert "curl " in row, f"{endpoint}: no curl example"
