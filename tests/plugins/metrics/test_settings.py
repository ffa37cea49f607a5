"""``[plugins.metrics]``: the example file documents every setting with its default,
and bad values are rejected naming the key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from lightningd_py.plugins.metrics import MetricsSettings
from pydantic import ValidationError

EXAMPLE = (Path(__file__).resolve().parents[3] / "config.toml.example").read_text()


def example_section() -> dict:
    """The [plugins.metrics] section with its commented settings uncommented."""
    section = EXAMPLE.split("[plugins.metrics]\n", 1)[1].split("\n# ----", 1)[0]
    lines = [m.group(1) for m in re.finditer(r"^#\s*([a-z_]+\s*=.*)$", section, re.M)]
    lines += [line for line in section.splitlines() if re.match(r"^[a-z_]+\s*=", line)]
    return tomllib.loads("\n".join(lines))


def test_the_example_covers_every_setting_with_its_default() -> None:
    table = example_section()
    assert table.pop("enabled") is True
    assert set(table) == set(MetricsSettings.model_fields)
    settings = MetricsSettings.model_validate(table)
    defaults = MetricsSettings()
    for name, value in table.items():
        if name == "currency":  # shown with an example value; unset by default
            assert defaults.currency is None and settings.currency == value
        else:
            assert value == getattr(defaults, name), name
    assert MetricsSettings.model_fields["listen"].json_schema_extra == {"restart": True}


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"listen": "9108"}, "listen"),
        ({"listen": "127.0.0.1:70000"}, "listen"),
        ({"refresh_interval": 0}, "refresh_interval"),
        ({"sample_interval": 1}, "sample_interval"),
        ({"currency": "eur"}, "currency"),
        ({"onchain_tx_vbytes": 10}, "onchain_tx_vbytes"),
        ({"fee_estimate_target_conf": 0}, "fee_estimate_target_conf"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_values_name_the_key(table: dict, key: str) -> None:
    with pytest.raises(ValidationError) as info:
        MetricsSettings.model_validate(table)
    assert info.value.errors()[0]["loc"] == (key,)
