"""[plugins.webhooks] through the daemon's config loader: errors name the endpoint and
the key, and never contain a secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lightningd_py.plugins.webhooks.settings import DEFAULT_RETRY_SCHEDULE, WebhooksSettings
from lightningd_py.plugins.webhooks.signing import generate_secret

from lightningd_py.config import load_config
from lightningd_py.errors import ConfigError

from .conftest import write_config


def load(tmp_path: Path, table: dict[str, Any]) -> WebhooksSettings:
    config = load_config(write_config(tmp_path, table), {"webhooks": WebhooksSettings})
    settings = config.plugins["webhooks"]
    assert isinstance(settings, WebhooksSettings)
    return settings


def problems(tmp_path: Path, table: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, table)
    return str(info.value)


def ep(**kw: Any) -> dict[str, Any]:
    base = {"name": "shop", "url": "https://shop.example/hook", "secret": generate_secret(), "events": ["*"]}
    return {**base, **kw}


def test_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path, {"endpoints": [ep()]})
    assert (
        tuple(settings.retry_schedule)
        == DEFAULT_RETRY_SCHEDULE
        == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    )
    (endpoint,) = settings.endpoints
    assert endpoint.timeout == 10 and endpoint.concurrency == 8 and endpoint.enabled
    assert len(endpoint.keys) == 1


def test_bad_url_names_the_endpoint(tmp_path: Path) -> None:
    text = problems(tmp_path, {"endpoints": [ep(), ep(name="erp", url="ftp://erp.example/x")]})
    assert "plugins.webhooks.endpoints[1].url: endpoint 'erp': not an http(s) URL" in text


def test_unknown_event_names_the_endpoint(tmp_path: Path) -> None:
    text = problems(tmp_path, {"endpoints": [ep(events=["payment.confirmed", "invoice.paid"])]})
    assert "plugins.webhooks.endpoints[0].events: endpoint 'shop': [1] unknown event 'invoice.paid'" in text


def test_missing_secret_names_the_endpoint(tmp_path: Path) -> None:
    table = ep()
    del table["secret"]
    text = problems(tmp_path, {"endpoints": [table]})
    assert (
        "plugins.webhooks.endpoints[0].secret: endpoint 'shop': give exactly one of secret or secret_file"
        in text
    )


def test_bad_secret_is_never_echoed(tmp_path: Path) -> None:
    leaked = "whsec_" + "A" * 10 + "!!!"
    text = problems(
        tmp_path, {"endpoints": [ep(secret=leaked), ep(name="b", secret="s3cr3t-value-123", url="x")]}
    )
    assert "endpoints[0].secret: endpoint 'shop': secret 1:" in text
    assert "endpoints[1].url: endpoint 'b': not an http(s) URL" in text
    assert "AAAAAAAAAA" not in text and "s3cr3t" not in text


def test_secret_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret, other = generate_secret(), generate_secret()
    monkeypatch.setenv("SHOP_WEBHOOK_SECRET", secret)
    (tmp_path / "erp.secret").write_text(f"{secret}\n{other}\n")
    from_file = ep(name="erp", secret_file="erp.secret")
    del from_file["secret"]
    settings = load(tmp_path, {"endpoints": [ep(secret="$SHOP_WEBHOOK_SECRET"), from_file]})
    assert len(settings.endpoints[0].keys) == 1
    assert len(settings.endpoints[1].keys) == 2
    assert secret not in repr(settings)


def test_missing_env_and_file(tmp_path: Path) -> None:
    table = {
        "endpoints": [ep(secret="$NO_SUCH_VARIABLE_HERE"), {**ep(name="erp"), "secret_file": "nope.secret"}]
    }
    del table["endpoints"][1]["secret"]
    text = problems(tmp_path, table)
    assert "environment variable NO_SUCH_VARIABLE_HERE is not set" in text
    assert "endpoints[1].secret_file: endpoint 'erp': cannot read" in text


def test_three_secrets_and_duplicate_names(tmp_path: Path) -> None:
    three = [generate_secret() for _ in range(3)]
    assert "expected one secret, or two while rotating" in problems(
        tmp_path, {"endpoints": [ep(secret=three)]}
    )
    assert "the name is used twice" in problems(tmp_path, {"endpoints": [ep(), ep()]})


def test_out_of_range_values(tmp_path: Path) -> None:
    text = problems(tmp_path, {"endpoints": [ep(timeout=0, concurrency=0)], "retry_schedule": [-1]})
    assert "plugins.webhooks.endpoints[0].timeout: must be > 0" in text
    assert "plugins.webhooks.endpoints[0].concurrency: must be >= 1" in text
    assert "plugins.webhooks.retry_schedule[0]: must be >= 0" in text


def test_config_example_section_covers_and_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re
    import tomllib

    from lightningd_py.plugins.webhooks.settings import EndpointSettings

    text = (Path(__file__).parents[3] / "config.toml.example").read_text()
    section = text.split("\n[plugins.webhooks]\n", 1)[1].split("\n# ----", 1)[0]
    # Uncomment the settings (and the example endpoint), leave the prose.
    lines = [
        re.sub(r"^# (\[\[plugins\.webhooks\.endpoints\]\]|[a-z_]+ = .*)$", r"\1", line)
        for line in section.splitlines()
    ]
    table = tomllib.loads("\n".join(lines))
    table.pop("enabled")
    endpoint = table["plugins"]["webhooks"]["endpoints"][0]
    del table["plugins"]
    assert set(table) == set(WebhooksSettings.model_fields) - {"endpoints"}
    assert set(endpoint) == set(EndpointSettings.model_fields)
    assert WebhooksSettings.model_validate(table) == WebhooksSettings()
    monkeypatch.setenv("SHOP_WEBHOOK_SECRET", generate_secret())
    del endpoint["secret_file"]
    load(tmp_path, {**table, "endpoints": [endpoint]})
