"""The [plugins.rebalancer] table: defaults, errors naming the key, and the example file."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from lightningd_py.plugins.rebalancer.settings import RebalancerSettings
from pydantic import BaseModel

from lightningd_py.config import load_config
from lightningd_py.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def _load(tmp_path: Path, table: str) -> Any:
    cert, macaroon = tmp_path / "tls.cert", tmp_path / "m.macaroon"
    cert.write_text("x")
    macaroon.write_text("x")
    path = tmp_path / "config.toml"
    path.write_text(
        f'[core]\nstate_dir = "{tmp_path / "state"}"\n[lnd]\ntls_cert = "{cert}"\nmacaroon = "{macaroon}"\n'
        f"[plugins.rebalancer]\n{table}"
    )
    return load_config(path, {"rebalancer": RebalancerSettings})


def test_defaults_and_backup_path_under_state_dir(tmp_path: Path) -> None:
    settings = _load(tmp_path, "").plugins["rebalancer"]
    assert (settings.min_ratio, settings.target_ratio, settings.max_ratio) == (0.2, 0.5, 0.8)
    assert settings.max_fee_ppm == 100 and settings.fee_policy.dry_run is True
    assert settings.lifecycle.enabled is False and settings.scheduler.enabled is False
    assert settings.backup.path == tmp_path / "state" / "channel.backup"


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ("min_ratio = 0.6\n", "plugins.rebalancer.target_ratio: must be >= min_ratio (0.6)"),
        ("max_fee_ppm = -5\n", "plugins.rebalancer.max_fee_ppm: must be >= 0"),
        ("exclude_peers = ['nope']\n", "plugins.rebalancer.exclude_peers"),
        (
            "[plugins.rebalancer.fee_policy]\nmin_ppm = 50\nmax_ppm = 10\n",
            "fee_policy.max_ppm: must be >= min_ppm",
        ),
        (
            "[plugins.rebalancer.scheduler]\ninterval = 1\n",
            "plugins.rebalancer.scheduler.interval: must be >= 10",
        ),
        ("max_fee = 3\n", "plugins.rebalancer.max_fee: unknown key"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, table: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, table)
    assert any(problem in p for p in info.value.problems), info.value.problems


def _fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.update(_fields(annotation, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = field.get_default(call_default_factory=True)
    return out


def test_config_example_documents_every_setting_with_its_default() -> None:
    text = (REPO / "config.toml.example").read_text()
    section = text[text.index("[plugins.rebalancer]") :]
    table = ""
    shown: dict[str, Any] = {}
    for line in section.splitlines():
        if m := re.match(r"^# \[plugins\.rebalancer\.([a-z_]+)\]$", line):
            table = m.group(1) + "."
        elif m := re.match(r"^# ([a-z_]+) = (.+)$", line):
            shown[table + m.group(1)] = tomllib.loads(f"v = {m.group(2)}")["v"]
    expected = _fields(RebalancerSettings)
    assert set(shown) == set(expected)
    for key, default in expected.items():
        if default is not None:
            assert shown[key] == (str(default) if isinstance(default, Path) else default), key
