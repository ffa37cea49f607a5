"""lightningd_py.config: every kind of bad config gives its exact message; overrides and
reloads."""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from lightningd_py.config import (
    Config,
    CoreSettings,
    HostPort,
    LndSettings,
    PluginSettings,
    SecretValue,
    load_config,
    merge_tables,
    reload_config,
    split_host_port,
    write_override,
)
from lightningd_py.errors import ConfigError
from lightningd_py.pluginhost import create_plugin_manager, plugin_schemas

REPO = Path(__file__).resolve().parent.parent
MACAROON_HEX = "0201036c6e6402f801030a10" * 8


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    url: HttpUrl
    events: list[str] = Field(default_factory=lambda: ["*"], min_length=1)


class WebhooksSettings(PluginSettings):
    endpoints: list[Endpoint] = Field(default_factory=list)
    secret: SecretValue | None = Field(None, repr=False)
    timeout: float = Field(10.0, gt=0, json_schema_extra={"hint": "seconds per attempt"})


class ApiSettings(PluginSettings):
    listen: HostPort = Field("127.0.0.1:8080", json_schema_extra={"restart": True})
    max_body_bytes: int = Field(65536, ge=1024)


class RequiredSettings(PluginSettings):
    url: HttpUrl


SCHEMAS: dict[str, type[PluginSettings] | None] = {
    "webhooks": WebhooksSettings,
    "http_api": ApiSettings,
    "metrics": None,
}


@pytest.fixture
def lnd_files(tmp_path: Path) -> tuple[Path, Path]:
    cert = tmp_path / "tls.cert"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    macaroon = tmp_path / "admin.macaroon"
    macaroon.write_bytes(b"\x02\x01")
    return cert, macaroon


@pytest.fixture
def write(tmp_path: Path, lnd_files: tuple[Path, Path]):
    """Write a config; ``{lnd}`` in the text expands to valid tls_cert/macaroon lines."""
    cert, macaroon = lnd_files

    def make(text: str, name: str = "config.toml") -> Path:
        path = tmp_path / name
        lnd = f'tls_cert = "{cert}"\nmacaroon = "{macaroon}"\n'
        path.write_text(text.replace("{lnd}", lnd))
        return path

    return make


def problems(path: Path, schemas=SCHEMAS) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, schemas)
    assert info.value.path == str(path)
    return info.value.problems


# ---------------------------------------------------------------- valid configs


def test_minimal_config_gets_documented_defaults(write, lnd_files, tmp_path):
    path = write("[lnd]\n{lnd}")
    config = load_config(path, SCHEMAS)
    assert isinstance(config, Config)
    assert config.path == path
    assert config.core.state_dir == Path("/var/lib/lightningd-py")
    assert config.core.database == Path("/var/lib/lightningd-py/lightningd-py.sqlite")
    assert (config.core.log_format, config.core.log_level, config.core.plugin_failure) == (
        "auto",
        "info",
        "refuse",
    )
    assert (config.core.hook_max_attempts, config.core.hook_timeout) == (0, 60)
    assert (config.core.journal_batch, config.core.shutdown_grace) == (500, 10)
    lnd = config.lnd
    assert lnd.host == "127.0.0.1:10009"
    assert lnd.tls_cert == lnd_files[0]
    assert lnd.macaroon == str(lnd_files[1])
    assert lnd.lndconnect is None
    assert (lnd.connect_timeout, lnd.rpc_timeout, lnd.reconnect_min, lnd.reconnect_max) == (10, 30, 1.0, 60.0)
    assert (lnd.keepalive_interval, lnd.max_receive_mb) == (60, 50)
    assert (lnd.invoice_sweep_interval, lnd.invoice_page_size) == (60, 200)
    assert config.enabled == {"webhooks": True, "http_api": True, "metrics": True}
    assert config.plugins["webhooks"] == WebhooksSettings()
    assert config.plugins["metrics"] is None
    assert config.overrides_path == Path("/var/lib/lightningd-py/overrides.toml")


def test_settings_are_frozen(write):
    config = load_config(write("[lnd]\n{lnd}"), SCHEMAS)
    with pytest.raises(Exception, match="frozen"):
        config.core.log_level = "debug"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.core = CoreSettings()  # type: ignore[misc]


def test_relative_paths_resolve_against_the_config_directory(tmp_path, lnd_files):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "config.toml"
    path.write_text(
        '[core]\nstate_dir = "state"\ndatabase = "db/x.sqlite"\n'
        '[lnd]\ntls_cert = "../tls.cert"\nmacaroon = "../admin.macaroon"\n'
    )
    config = load_config(path, {})
    assert config.core.state_dir == tmp_path / "sub" / "state"
    assert config.core.database == tmp_path / "sub" / "state" / "db" / "x.sqlite"
    assert config.lnd.tls_cert == tmp_path / "sub" / ".." / "tls.cert"
    assert Path(config.lnd.macaroon or "").resolve() == lnd_files[1]


def test_absolute_database_is_kept(write, tmp_path):
    config = load_config(write('[core]\ndatabase = "/srv/db.sqlite"\n[lnd]\n{lnd}'), {})
    assert config.core.database == Path("/srv/db.sqlite")


def test_macaroon_hex_and_environment_references(write, lnd_files, monkeypatch):
    config = load_config(write(f'[lnd]\ntls_cert = "{lnd_files[0]}"\nmacaroon = "{MACAROON_HEX}"\n'), {})
    assert config.lnd.macaroon == MACAROON_HEX
    monkeypatch.setenv("LDP_TEST_MACAROON", MACAROON_HEX)
    for ref in ("$LDP_TEST_MACAROON", "env:LDP_TEST_MACAROON"):
        config = load_config(write(f'[lnd]\ntls_cert = "{lnd_files[0]}"\nmacaroon = "{ref}"\n'), {})
        assert config.lnd.macaroon == MACAROON_HEX
    # Secrets stay out of reprs (and so out of logs).
    assert MACAROON_HEX not in repr(config) and MACAROON_HEX not in repr(config.lnd)


def test_lndconnect_alone_needs_no_other_credentials(write):
    uri = "lndconnect://node.example:10009?cert=MIIB&macaroon=AgEDbG5k"
    config = load_config(write(f'[lnd]\nlndconnect = "{uri}"\n'), {})
    assert config.lnd.lndconnect == uri
    assert config.lnd.tls_cert is None and config.lnd.macaroon is None
    assert "AgEDbG5k" not in repr(config)


def test_ipv6_host_and_split_host_port():
    assert split_host_port("[::1]:10009") == ("::1", 10009)
    assert split_host_port("lnd.local:10009") == ("lnd.local", 10009)
    for bad in ("lnd", ":10009", "::1:10009", "host:port", "host:0", "host:70000"):
        with pytest.raises(ValueError):
            split_host_port(bad)


def test_plugin_tables_validate_with_their_models(write):
    path = write(
        "[lnd]\n{lnd}"
        "[plugins.webhooks]\ntimeout = 2.5\n"
        '[[plugins.webhooks.endpoints]]\nurl = "https://example.com/hook"\n'
        "[plugins.http_api]\nenabled = false\n"
        "[plugins.metrics]\nenabled = true\n"
    )
    config = load_config(path, SCHEMAS)
    webhooks = config.plugins["webhooks"]
    assert isinstance(webhooks, WebhooksSettings)
    assert webhooks.timeout == 2.5
    assert str(webhooks.endpoints[0].url) == "https://example.com/hook"
    assert config.enabled == {"webhooks": True, "http_api": False, "metrics": True}


def test_disabled_plugin_with_invalid_table_is_accepted(write):
    path = write("[lnd]\n{lnd}[plugins.needs]\nenabled = false\n")
    config = load_config(path, {"needs": RequiredSettings})
    assert config.enabled["needs"] is False
    assert config.plugins["needs"] is None


def test_plugins_that_failed_to_load_keep_their_tables(write):
    path = write('[lnd]\n{lnd}[plugins.broken]\nenabled = false\nanything = "goes"\n')
    config = load_config(path, SCHEMAS, unavailable={"broken": "import failed"})
    assert config.enabled["broken"] is False
    assert config.plugins["broken"] is None


def test_config_toml_example_validates_and_covers_every_setting(tmp_path):
    text = (REPO / "config.toml.example").read_text()
    data = tomllib.loads(text)
    # The example points at a typical LND layout; stand files in for it here.
    cert, macaroon = tmp_path / "tls.cert", tmp_path / "m.macaroon"
    cert.write_text("x")
    macaroon.write_text("x")
    text = text.replace(data["lnd"]["tls_cert"], str(cert)).replace(data["lnd"]["macaroon"], str(macaroon))
    path = tmp_path / "config.toml"
    path.write_text(text)
    # Validated with the installed plugins' own models.
    pm = create_plugin_manager()
    assert pm.failures == []
    config = load_config(path, plugin_schemas(pm))
    assert set(config.enabled) == {"invoice_tracker", "http_api", "webhooks", "metrics", "rebalancer"}
    commented = set(re.findall(r"^#\s*([a-z_]+)\s*=", text, re.M))
    for table, model in (("core", CoreSettings), ("lnd", LndSettings)):
        for name in model.model_fields:
            assert name in data[table] or name in commented, f"config.toml.example lacks {table}.{name}"
        # The example shows the defaults.
        for name, value in data[table].items():
            default = model.model_fields[name].default
            if name not in ("tls_cert", "macaroon", "state_dir", "database"):
                assert value == default, f"{table}.{name}: example {value!r} != default {default!r}"


# ---------------------------------------------------------------- bad configs, exact messages


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    assert problems(path) == ["file not found"]
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(path))}: invalid configuration\n  file not found$"
    ):
        load_config(path, {})


def test_syntax_error_names_line_and_column(write):
    path = write('[core]\nlog_level = "info"\nstate_dir = \n')
    assert problems(path) == ["TOML syntax error at line 3, column 13: invalid value"]


def test_syntax_error_duplicate_key(write):
    path = write('[core]\nlog_level = "info"\nlog_level = "debug"\n')
    [problem] = problems(path)
    assert problem.startswith("TOML syntax error at line 3, column ")


def test_not_utf8(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b'[core]\nlog_level = "\xff"\n')
    assert problems(path) == ["not UTF-8 text (byte 20)"]


def test_unknown_keys_suggest_the_closest_name(write):
    path = write('[core]\nlog_levl = "info"\nstat_dir = "/x"\n[lnd]\n{lnd}keepalive = 30\nzzz = 1\n')
    assert problems(path) == [
        "core.log_levl: unknown key; did you mean 'log_level'?",
        "core.stat_dir: unknown key; did you mean 'state_dir'?",
        "lnd.keepalive: unknown key; did you mean 'keepalive_interval'?",
        "lnd.zzz: unknown key (expected one of: connect_timeout, host, invoice_page_size, "
        "invoice_sweep_interval, keepalive_interval, lndconnect, macaroon, max_receive_mb, "
        "reconnect_max, reconnect_min, rpc_timeout, tls_cert)",
    ]


def test_unknown_top_level_tables_and_keys(write):
    path = write("[lnd]\n{lnd}[cor]\nx = 1\n[servers]\nx = 1\n")
    assert problems(path) == [
        "cor: unknown table; did you mean 'core'?",
        "servers: unknown table (expected [core], [lnd] or [plugins.NAME])",
    ]
    path = write('state_dir = "/x"\n[lnd]\n{lnd}')
    assert problems(path) == ["state_dir: unknown key (expected [core], [lnd] or [plugins.NAME])"]


def test_wrong_types_say_what_is_expected(write):
    path = write(
        '[core]\njournal_batch = "500"\nhook_timeout = "1m"\nlog_level = 3\nstate_dir = 5\n'
        '[lnd]\n{lnd}invoice_page_size = 10.5\nhost = 10009\n[plugins.http_api]\nenabled = "yes"\n'
    )
    assert problems(path) == [
        "core.state_dir: expected a path (string), got an integer",
        "core.log_level: expected 'debug', 'info', 'warning' or 'error', got an integer",
        "core.hook_timeout: expected a number, got a string",
        "core.journal_batch: expected an integer, got a string",
        "lnd.host: expected a string, got an integer",
        "lnd.invoice_page_size: expected an integer, got a float",
        "plugins.http_api.enabled: expected true or false, got a string",
    ]


def test_core_and_plugin_tables_must_be_tables(write):
    path = write('core = 1\nplugins = "all"\n[lnd]\n{lnd}')
    assert problems(path) == [
        "core: expected a table, got an integer",
        "plugins: expected a table of [plugins.NAME] tables, got a string",
    ]
    path = write("[lnd]\n{lnd}[plugins]\nwebhooks = 1\n")
    assert problems(path) == ["plugins.webhooks: expected a table, got an integer"]


def test_out_of_range_values(write):
    path = write(
        "[core]\nhook_max_attempts = -1\nhook_timeout = 0\njournal_batch = 20000\n"
        "[lnd]\n{lnd}keepalive_interval = 5\nmax_receive_mb = 4\ninvoice_page_size = 0\n"
        "reconnect_min = 10.0\nreconnect_max = 5.0\n"
    )
    assert problems(path) == [
        "core.hook_max_attempts: must be >= 0",
        "core.hook_timeout: must be > 0",
        "core.journal_batch: must be <= 10000",
        "lnd.reconnect_max: must be >= reconnect_min (10)",
        "lnd.keepalive_interval: must be >= 10 (LND closes connections that ping more often than every 5 s)",
        "lnd.max_receive_mb: must be >= 50 (LND replies can exceed gRPC's 4 MiB default)",
        "lnd.invoice_page_size: must be >= 1",
    ]


def test_bad_host(write):
    assert problems(write('[lnd]\n{lnd}host = "localhost"\n')) == [
        "lnd.host: expected host:port, e.g. 127.0.0.1:10009 or [::1]:10009"
    ]
    assert problems(write('[lnd]\n{lnd}host = "localhost:99999"\n')) == [
        "lnd.host: port must be between 1 and 65535"
    ]


def test_credentials_are_required_without_lndconnect(write):
    assert problems(write("[core]\n")) == [
        "lnd.tls_cert: required (the path of LND's tls.cert) unless lnd.lndconnect is set",
        "lnd.macaroon: required (a macaroon file path or hex) unless lnd.lndconnect is set",
    ]


def test_credential_files_must_exist(write, tmp_path):
    path = write('[lnd]\ntls_cert = "missing.cert"\nmacaroon = "missing.macaroon"\n')
    assert problems(path) == [
        f"lnd.tls_cert: file not found: {tmp_path / 'missing.cert'}",
        f"lnd.macaroon: file not found: {tmp_path / 'missing.macaroon'}",
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_macaroon(write, lnd_files):
    lnd_files[1].chmod(0)
    assert problems(write("[lnd]\n{lnd}")) == [
        f"lnd.macaroon: cannot read {lnd_files[1]} (permission denied)"
    ]


def test_lndconnect_is_mutually_exclusive(write, lnd_files):
    uri = "lndconnect://node.example:10009?cert=MIIB&macaroon=AgEDbG5k"
    path = write(f'[lnd]\nlndconnect = "{uri}"\nhost = "10.0.0.2:10009"\nmacaroon = "{MACAROON_HEX}"\n')
    assert problems(path) == [
        "lnd.lndconnect: cannot be combined with lnd.host, lnd.macaroon "
        "(the lndconnect URI carries the host, certificate and macaroon)"
    ]


def test_bad_lndconnect_uris_are_not_echoed(write):
    for uri in ("https://node:10009?macaroon=SECRETSECRET", "lndconnect://node:port?macaroon=SECRETSECRET"):
        [problem] = problems(write(f'[lnd]\nlndconnect = "{uri}"\n'))
        assert problem == (
            "lnd.lndconnect: not an lndconnect:// URI (expected lndconnect://host:port?cert=...&macaroon=...)"
        )
    assert problems(write('[lnd]\nlndconnect = "lndconnect://node:10009?cert=SECRETSECRET"\n')) == [
        "lnd.lndconnect: the lndconnect URI has no macaroon parameter"
    ]


def test_missing_environment_variable(write, lnd_files, monkeypatch):
    monkeypatch.delenv("LDP_TEST_UNSET", raising=False)
    path = write(f'[lnd]\ntls_cert = "{lnd_files[0]}"\nmacaroon = "$LDP_TEST_UNSET"\n')
    assert problems(path) == ["lnd.macaroon: environment variable LDP_TEST_UNSET is not set"]


def test_secret_values_are_never_echoed(write):
    path = write('[core]\nlog_level = "hunter2-secret"\n[lnd]\n{lnd}max_receive_mb = "hunter2-secret"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, SCHEMAS)
    assert "hunter2" not in str(info.value)


def test_unknown_plugin_suggests_an_installed_one(write):
    path = write("[lnd]\n{lnd}[plugins.webhook]\nenabled = true\n[plugins.zebra]\n")
    assert problems(path) == [
        "plugins.webhook: no such plugin; did you mean 'webhooks'?",
        "plugins.zebra: no such plugin (installed plugins: http_api, metrics, webhooks)",
    ]


def test_plugin_errors_carry_the_full_key_path(write):
    path = write(
        "[lnd]\n{lnd}"
        "[plugins.webhooks]\ntimeout = 0\nendpoints = [\n"
        '  {url = "https://ok.example"},\n  {url = "ftp://files.example"},\n'
        '  {url = "not a url", events = []},\n  {uri = "https://x.example"},\n]\n'
        '[plugins.http_api]\nlisten = "0.0.0.0"\nmax_body = 1\n'
        "[plugins.metrics]\nport = 9108\n"
    )
    assert problems(path) == [
        "plugins.webhooks.endpoints[1].url: not an http(s) URL",
        "plugins.webhooks.endpoints[2].url: not a valid URL (relative URL without a base)",
        "plugins.webhooks.endpoints[2].events: must have at least 1 item",
        "plugins.webhooks.endpoints[3].url: required",
        "plugins.webhooks.endpoints[3].uri: unknown key; did you mean 'url'?",
        "plugins.webhooks.timeout: must be > 0 (seconds per attempt)",
        "plugins.http_api.listen: expected host:port, e.g. 127.0.0.1:10009 or [::1]:10009",
        "plugins.http_api.max_body: unknown key; did you mean 'max_body_bytes'?",
        "plugins.metrics.port: unknown key (plugin 'metrics' takes no settings other than 'enabled')",
    ]


def test_model_validator_lines_name_their_key(write):
    class Pair(PluginSettings):
        low: int = 1
        high: int = 2

        @model_validator(mode="after")
        def _order(self) -> Pair:
            if self.high < self.low:
                raise ValueError("high: must be >= low\nlow: must be <= high")
            return self

    path = write("[lnd]\n{lnd}[plugins.pair]\nlow = 5\nhigh = 1\n")
    assert problems(path, {"pair": Pair}) == [
        "plugins.pair.high: must be >= low",
        "plugins.pair.low: must be <= high",
    ]


def test_required_plugin_settings(write):
    assert problems(write("[lnd]\n{lnd}"), {"needs": RequiredSettings}) == ["plugins.needs.url: required"]


def test_all_problems_are_reported_at_once(write):
    path = write('[core]\nlog_level = "loud"\n[lnd]\nkeepalive_interval = 1\n[plugins.nope]\n')
    found = problems(path)
    assert len(found) == 3
    with pytest.raises(ConfigError) as info:
        load_config(path, SCHEMAS)
    assert str(info.value).count("\n  ") == 3


# ---------------------------------------------------------------- overrides


def test_overrides_round_trip(write, tmp_path):
    path = write(
        '[core]\nstate_dir = "state"\n[lnd]\n{lnd}'
        '[plugins.webhooks]\ntimeout = 3.0\nsecret = "whsec_operator"\n'
        '[[plugins.webhooks.endpoints]]\nurl = "https://a.example"\n'
    )
    config = load_config(path, SCHEMAS)
    before = path.read_text()
    target = write_override(config, "webhooks", {"timeout": 7.5, "endpoints": [{"url": "https://b.example"}]})
    assert target == tmp_path / "state" / "overrides.toml"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert path.read_text() == before  # the operator's file is never rewritten
    config = load_config(path, SCHEMAS)
    webhooks = config.plugins["webhooks"]
    assert isinstance(webhooks, WebhooksSettings)
    assert webhooks.timeout == 7.5
    assert [str(e.url) for e in webhooks.endpoints] == ["https://b.example/"]
    assert webhooks.secret == "whsec_operator"  # untouched keys come from the operator's file

    # Updates merge; None removes an override (the operator's value shows again).
    write_override(config, "http_api", {"enabled": False})
    write_override(config, "webhooks", {"timeout": None})
    assert tomllib.loads(target.read_text()) == {
        "plugins": {"webhooks": {"endpoints": [{"url": "https://b.example"}]}, "http_api": {"enabled": False}}
    }
    config = load_config(path, SCHEMAS)
    assert config.plugins["webhooks"].timeout == 3.0  # type: ignore[union-attr]
    assert config.enabled["http_api"] is False


def test_write_override_refuses_invalid_settings(write, tmp_path):
    path = write('[core]\nstate_dir = "state"\n[lnd]\n{lnd}')
    config = load_config(path, SCHEMAS)
    with pytest.raises(ConfigError) as info:
        write_override(config, "webhooks", {"timeout": -1, "endpoints": [{"url": "gopher://x"}]})
    assert info.value.problems == [
        "plugins.webhooks.endpoints[0].url: not an http(s) URL",
        "plugins.webhooks.timeout: must be > 0 (seconds per attempt)",
    ]
    assert not (tmp_path / "state" / "overrides.toml").exists()
    with pytest.raises(ConfigError, match=r"plugins\.webhook: no such plugin; did you mean 'webhooks'"):
        write_override(config, "webhook", {})


def test_bad_override_values_name_the_overrides_file(write, tmp_path):
    path = write('[core]\nstate_dir = "state"\n[lnd]\n{lnd}')
    (tmp_path / "state").mkdir()
    overrides = tmp_path / "state" / "overrides.toml"
    overrides.write_text('[core]\nlog_level = "debug"\n[plugins.webhooks]\ntimeout = -2\n')
    assert problems(path) == [
        f"{overrides}: only [plugins.NAME] tables may be overridden, found core",
        f"plugins.webhooks.timeout: must be > 0 (seconds per attempt) (set in {overrides})",
    ]
    overrides.write_text("[plugins.webhooks\n")
    assert problems(path) == [
        f"{overrides}: TOML syntax error at line 1, column 18: expected ']' at the end of a table declaration"
    ]


def test_merge_tables():
    base = {"a": {"b": 1, "c": [1]}, "d": 1}
    assert merge_tables(base, {"a": {"c": [2], "e": {"f": 1}}, "d": None}) == {
        "a": {"b": 1, "c": [2], "e": {"f": 1}}
    }
    assert base == {"a": {"b": 1, "c": [1]}, "d": 1}


# ---------------------------------------------------------------- reload


def test_reload_lists_changes_that_need_a_restart(write):
    path = write('[lnd]\n{lnd}[plugins.http_api]\nlisten = "127.0.0.1:8080"\n')
    old = load_config(path, SCHEMAS)
    path.write_text(
        path.read_text().replace("127.0.0.1:8080", "127.0.0.1:8081")
        + '[core]\nlog_level = "debug"\ndatabase = "other.sqlite"\n'
        "[plugins.metrics]\nenabled = false\n"
    )
    path.write_text(path.read_text().replace("[lnd]\n", '[lnd]\nrpc_timeout = 5\nhost = "127.0.0.1:10010"\n'))
    new, restart = reload_config(old, SCHEMAS)
    assert new.core.log_level == "debug"
    assert restart == [
        "core.database",
        "lnd.host",
        "lnd.rpc_timeout",
        "plugins.http_api.listen",
        "plugins.metrics.enabled",
    ]


def test_reload_of_an_unchanged_file_needs_no_restart(write):
    path = write("[lnd]\n{lnd}")
    old = load_config(path, SCHEMAS)
    new, restart = reload_config(old, SCHEMAS)
    assert new == old and restart == []


def test_reload_of_a_broken_file_raises(write):
    path = write("[lnd]\n{lnd}")
    old = load_config(path, SCHEMAS)
    path.write_text("[lnd\n")
    with pytest.raises(ConfigError):
        reload_config(old, SCHEMAS)
