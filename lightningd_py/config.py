"""One TOML file -> frozen, typed, validated settings.

The operator's file is read once with ``tomllib``. ``[core]`` and ``[lnd]`` are validated
here; each ``[plugins.NAME]`` table is validated by the pydantic model its plugin declares
through ``ldp_config_schema``. Every problem (syntax, unknown keys, wrong types, values out
of range, unknown plugins) is collected into one ``ConfigError`` naming the key path and
what is expected, before anything starts.

Settings a plugin changes at run time go to ``<state_dir>/overrides.toml`` (only
``[plugins.*]`` tables), deep-merged over the operator's file on load; the operator's file
is never rewritten.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

import tomli_w
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from .errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "OVERRIDES_FILE",
    "Config",
    "CoreSettings",
    "HostPort",
    "LndSettings",
    "PluginSettings",
    "SecretValue",
    "default_config_path",
    "load_config",
    "merge_tables",
    "reload_config",
    "resolve_secret_ref",
    "split_host_port",
    "write_override",
    "write_private_file",
]

DEFAULT_CONFIG_PATH = Path("/etc/lightningd-py/config.toml")
CONFIG_ENV = "LIGHTNINGD_PY_CONFIG"
OVERRIDES_FILE = "overrides.toml"

_TOP_LEVEL = ("core", "lnd", "plugins")
_ENV_REF = re.compile(r"^(?:\$|env:)([A-Za-z_][A-Za-z0-9_]*)$")
# Macaroons are a few hundred hex digits; anything shorter or not hex is a file path.
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2}){16,}$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_M = typing.TypeVar("_M", bound=BaseModel)


def default_config_path() -> Path:
    """``$LIGHTNINGD_PY_CONFIG`` if set, else ``/etc/lightningd-py/config.toml``."""
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


# ---------------------------------------------------------------- reusable field types


def resolve_secret_ref(value: Any) -> Any:
    """Resolve ``"$NAME"`` or ``"env:NAME"`` to the environment variable's value, so
    secrets need not be written in the config file. Other values pass unchanged."""
    if isinstance(value, str) and (m := _ENV_REF.match(value)):
        name = m.group(1)
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    return value


def split_host_port(value: str) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[::1]:port"`` for IPv6); raise ValueError when malformed."""
    expected = "expected host:port, e.g. 127.0.0.1:10009 or [::1]:10009"
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(expected)
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(expected)
        host = host[1:-1]
    elif ":" in host or any(c.isspace() for c in host):
        raise ValueError(expected)
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError("port must be between 1 and 65535")
    return host, number


def _check_host_port(value: str) -> str:
    split_host_port(value)
    return value


#: A ``host:port`` string, validated (plugins use it for listen addresses).
HostPort = Annotated[str, AfterValidator(_check_host_port)]
#: A string that may be given as ``"$NAME"`` / ``"env:NAME"`` (read from the environment).
#: Declare the field with ``Field(repr=False)`` so it stays out of reprs and logs.
SecretValue = Annotated[str, BeforeValidator(resolve_secret_ref)]


def _base_dir(info: ValidationInfo) -> Path | None:
    context = info.context if isinstance(info.context, Mapping) else {}
    base = context.get("base_dir")
    return Path(base) if base is not None else None


def _resolve(path: Path, info: ValidationInfo) -> Path:
    path = path.expanduser()
    base = _base_dir(info)
    return base / path if base is not None and not path.is_absolute() else path


def _restart(**extra: Any) -> dict[str, Any]:
    return {"restart": True, **extra}


# ---------------------------------------------------------------- settings models


class CoreSettings(BaseModel):
    """``[core]``: the daemon's own settings."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    state_dir: Path = Field(
        Path("/var/lib/lightningd-py"),
        strict=False,
        json_schema_extra=_restart(),
        description="Directory of the database and overrides.toml; relative to the config file.",
    )
    database: Path = Field(
        Path("lightningd-py.sqlite"),
        strict=False,
        validate_default=True,
        json_schema_extra=_restart(),
        description="sqlite database file, relative to state_dir.",
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    plugin_failure: Literal["refuse", "skip"] = "refuse"
    hook_max_attempts: int = Field(0, ge=0, description="0 retries a failing hook forever.")
    hook_timeout: float = Field(60.0, gt=0)
    journal_batch: int = Field(500, ge=1, le=10000)
    shutdown_grace: float = Field(10.0, ge=0)

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(value, info)

    @field_validator("database")
    @classmethod
    def _database(cls, value: Path, info: ValidationInfo) -> Path:
        state_dir = info.data.get("state_dir")
        value = value.expanduser()
        return state_dir / value if state_dir is not None and not value.is_absolute() else value


class LndSettings(BaseModel):
    """``[lnd]``: how to reach LND. Every field needs a restart to change."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    host: HostPort = Field("127.0.0.1:10009", json_schema_extra=_restart())
    tls_cert: Path | None = Field(None, strict=False, json_schema_extra=_restart())
    macaroon: SecretValue | None = Field(
        None, repr=False, json_schema_extra=_restart(), description="File path or hex."
    )
    lndconnect: SecretValue | None = Field(None, repr=False, json_schema_extra=_restart())
    connect_timeout: float = Field(10.0, gt=0, json_schema_extra=_restart())
    rpc_timeout: float = Field(30.0, gt=0, json_schema_extra=_restart())
    reconnect_min: float = Field(1.0, gt=0, json_schema_extra=_restart())
    reconnect_max: float = Field(60.0, gt=0, json_schema_extra=_restart())
    keepalive_interval: float = Field(
        60.0,
        ge=10,
        json_schema_extra=_restart(hint="LND closes connections that ping more often than every 5 s"),
    )
    max_receive_mb: int = Field(
        50,
        ge=50,
        json_schema_extra=_restart(hint="LND replies can exceed gRPC's 4 MiB default"),
    )
    invoice_sweep_interval: float = Field(60.0, gt=0, json_schema_extra=_restart())
    invoice_page_size: int = Field(200, ge=1, le=10000, json_schema_extra=_restart())

    @field_validator("tls_cert")
    @classmethod
    def _tls_cert(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)

    @field_validator("macaroon")
    @classmethod
    def _macaroon(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or _HEX.match(value):
            return value
        if not value.strip():
            raise ValueError("expected a file path or the macaroon in hex, got an empty string")
        return str(_resolve(Path(value), info))

    @field_validator("lndconnect")
    @classmethod
    def _lndconnect(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Never echo the URI: it carries the macaroon.
        expected = "not an lndconnect:// URI (expected lndconnect://host:port?cert=...&macaroon=...)"
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise ValueError(expected) from None
        if parts.scheme != "lndconnect" or not parts.hostname:
            raise ValueError(expected)
        if not parse_qs(parts.query).get("macaroon"):
            raise ValueError("the lndconnect URI has no macaroon parameter")
        return value

    @field_validator("reconnect_max")
    @classmethod
    def _reconnect_max(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("reconnect_min")
        if low is not None and value < low:
            raise ValueError(f"must be >= reconnect_min ({low:g})")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> LndSettings:
        # One ValueError may carry several "key: message" lines; load_config splits them.
        if self.lndconnect is not None:
            clash = [k for k in ("host", "tls_cert", "macaroon") if k in self.model_fields_set]
            if clash:
                names = ", ".join(f"lnd.{k}" for k in clash)
                raise ValueError(
                    f"lndconnect: cannot be combined with {names} "
                    "(the lndconnect URI carries the host, certificate and macaroon)"
                )
            return self
        missing = []
        if self.tls_cert is None:
            missing.append("tls_cert: required (the path of LND's tls.cert) unless lnd.lndconnect is set")
        if self.macaroon is None:
            missing.append("macaroon: required (a macaroon file path or hex) unless lnd.lndconnect is set")
        if missing:
            raise ValueError("\n".join(missing))
        return self


class PluginSettings(BaseModel):
    """Base of every plugin's ``[plugins.NAME]`` model: unknown keys are errors and the
    instance is frozen. ``enabled`` is handled by the core; do not declare it.

    Mark a field ``Field(json_schema_extra={"restart": True})`` when a change needs a
    restart (listen addresses); ``{"hint": "why"}`` is appended to range errors. A model
    validator may raise ``ValueError("key: message")`` (one such line per problem) to
    name the key at fault. Validation context has ``base_dir`` (the config file's
    directory) and ``state_dir``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration.

    :ivar path: the operator's config file.
    :ivar plugins: each installed plugin's validated table (None when the plugin declares
        no schema, or is disabled and its table does not validate).
    :ivar enabled: every installed plugin's ``enabled`` value.
    """

    path: Path
    core: CoreSettings
    lnd: LndSettings
    plugins: dict[str, PluginSettings | None]
    enabled: dict[str, bool]

    @property
    def overrides_path(self) -> Path:
        """Where run-time plugin settings are written (``write_override``)."""
        return self.core.state_dir / OVERRIDES_FILE


# ---------------------------------------------------------------- loading


def load_config(
    path: Path,
    schemas: Mapping[str, type[PluginSettings] | None],
    *,
    unavailable: Mapping[str, str] | None = None,
) -> Config:
    """Read, merge and validate the config.

    :param path: the operator's TOML file.
    :param schemas: every installed plugin's name and the model of its table (None for
        a plugin without settings).
    :param unavailable: plugins that are installed but failed to load (name -> reason):
        their tables are accepted unvalidated (settings None) and only ``enabled`` is
        read, so the caller can apply ``core.plugin_failure`` instead of the config
        reporting "no such plugin".
    :raises ConfigError: listing every problem found, each naming its key path (or line
        and column for syntax errors) and what is expected.
    """
    path = Path(path).expanduser().absolute()
    raw = _read_toml(path)
    context: dict[str, Any] = {"base_dir": path.parent}
    problems: list[str] = []
    for key in raw:
        if key not in _TOP_LEVEL:
            kind = "table" if isinstance(raw[key], dict) else "key"
            problems.append(f"{_quote(key)}: unknown {kind}{_suggest(key, _TOP_LEVEL, tables=True)}")

    core = _validate(CoreSettings, raw.get("core", {}), ("core",), context, problems)
    lnd = _validate(LndSettings, raw.get("lnd", {}), ("lnd",), context, problems)
    if lnd is not None:
        _check_lnd_files(lnd, problems)

    tables = raw.get("plugins", {})
    if not isinstance(tables, dict):
        problems.append(f"plugins: expected a table of [plugins.NAME] tables, got {_kind(tables)}")
        tables = {}
    overridden: set[tuple[str, ...]] = set()
    if core is not None:
        context["state_dir"] = core.state_dir
        overrides = _read_overrides(core.state_dir / OVERRIDES_FILE, problems)
        tables = _deep_merge(tables, overrides, overridden, ())
    known: dict[str, type[PluginSettings] | None] = dict(schemas)
    for name in unavailable or {}:
        known.setdefault(name, None)
    plugins, enabled = _validate_plugins(
        tables, known, set(unavailable or ()), context, problems, overridden, core
    )

    if problems or core is None or lnd is None:
        raise ConfigError(problems, path=str(path))
    return Config(path=path, core=core, lnd=lnd, plugins=plugins, enabled=enabled)


def reload_config(
    old: Config,
    schemas: Mapping[str, type[PluginSettings] | None],
    *,
    unavailable: Mapping[str, str] | None = None,
) -> tuple[Config, list[str]]:
    """Load ``old.path`` again (SIGHUP).

    :return: the new config and the key paths of changed settings that only take effect
        after a restart (``core.state_dir``, ``core.database``, ``lnd.*``, plugin fields
        marked ``restart``, and ``plugins.NAME.enabled``).
    :raises ConfigError: when the file no longer validates (keep running on ``old``).
    """
    new = load_config(old.path, schemas, unavailable=unavailable)
    changed = _restart_changes("core", old.core, new.core) + _restart_changes("lnd", old.lnd, new.lnd)
    for name in sorted(set(old.enabled) | set(new.enabled)):
        if old.enabled.get(name) != new.enabled.get(name):
            changed.append(f"plugins.{name}.enabled")
        before, after = old.plugins.get(name), new.plugins.get(name)
        if before is not None and after is not None and type(before) is type(after):
            changed += _restart_changes(f"plugins.{name}", before, after)
    return new, changed


def write_override(config: Config, plugin: str, table: Mapping[str, Any]) -> Path:
    """Merge ``table`` into ``[plugins.<plugin>]`` of ``<state_dir>/overrides.toml``.

    Nested tables merge key by key; a value of None removes the key. The merged result
    (the operator's table under the overrides) is validated with the plugin's model
    first, and the file is replaced atomically (mode 0600). Takes effect on the next
    load or reload. Blocking (file I/O, fsync): from async code call it through
    ``anyio.to_thread.run_sync``.

    :return: the overrides file's path.
    :raises ConfigError: unknown plugin, or the result does not validate.
    """
    if plugin not in config.enabled:
        raise ConfigError([f"plugins.{plugin}: no such plugin{_suggest(plugin, config.enabled)}"])
    target = config.overrides_path
    problems: list[str] = []
    current = _read_overrides(target, problems)
    if problems:
        raise ConfigError(problems, path=str(target))
    updated = dict(current)
    updated[plugin] = merge_tables(current.get(plugin, {}), table)

    settings = config.plugins.get(plugin)
    if settings is not None:
        operator = _read_toml(config.path).get("plugins", {}).get(plugin, {})
        merged = merge_tables(operator, updated[plugin])
        merged.pop("enabled", None)
        context = {"base_dir": config.path.parent, "state_dir": config.core.state_dir}
        _validate(type(settings), merged, ("plugins", plugin), context, problems)
        if problems:
            raise ConfigError(problems, path=str(target))

    data = tomli_w.dumps({"plugins": {k: v for k, v in updated.items() if v}}).encode()
    return write_private_file(target, data)


def write_private_file(path: Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically and durably (temporary file, fsync,
    rename, fsync of the directory), readable only by its owner (0600: config files
    hold secrets). Parent directories are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename durable
    finally:
        os.close(dir_fd)
    return path


def merge_tables(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` deep-merged into ``base`` (neither is changed): tables merge key by key,
    other values are replaced, and a value of None removes the key."""
    return _deep_merge(base, over, set(), ())


# ---------------------------------------------------------------- internals


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(["file not found"], path=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text (byte {exc.start})"], path=str(path)) from None
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror}"], path=str(path)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(str(exc))], path=str(path)) from None


def _syntax_problem(message: str) -> str:
    m = re.match(r"^(.*) \(at line (\d+), column (\d+)\)$", message)
    if m:
        what, line, column = m.groups()
        return f"TOML syntax error at line {line}, column {column}: {what[:1].lower()}{what[1:]}"
    return f"TOML syntax error: {message[:1].lower()}{message[1:]}"


def _read_overrides(path: Path, problems: list[str]) -> dict[str, Any]:
    """The ``[plugins.*]`` tables of an overrides file ({} when absent)."""
    if not path.exists():
        return {}
    try:
        data = _read_toml(path)
    except ConfigError as exc:
        problems.extend(f"{path}: {p}" for p in exc.problems)
        return {}
    for key in data:
        if key != "plugins":
            problems.append(f"{path}: only [plugins.NAME] tables may be overridden, found {_quote(key)}")
    plugins = data.get("plugins", {})
    if not isinstance(plugins, dict) or not all(isinstance(v, dict) for v in plugins.values()):
        problems.append(f"{path}: plugins: expected [plugins.NAME] tables")
        return {}
    return plugins


def _deep_merge(
    base: Mapping[str, Any], over: Mapping[str, Any], marks: set[tuple[str, ...]], at: tuple[str, ...]
) -> dict[str, Any]:
    """``over`` merged into ``base``: tables key by key, other values replaced, None
    removes. The key paths taken from ``over`` are added to ``marks``."""
    out = dict(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value, marks, (*at, key))
        else:
            out[key] = dict(value) if isinstance(value, Mapping) else value
            marks.add((*at, key))
    return out


def _validate_plugins(
    tables: dict[str, Any],
    schemas: Mapping[str, type[PluginSettings] | None],
    unavailable: set[str],
    context: dict[str, Any],
    problems: list[str],
    overridden: set[tuple[str, ...]],
    core: CoreSettings | None,
) -> tuple[dict[str, PluginSettings | None], dict[str, bool]]:
    note = f" (set in {core.state_dir / OVERRIDES_FILE})" if core is not None else ""
    for name, table in tables.items():
        if name not in schemas:
            problems.append(
                f"plugins.{_quote(name)}: no such plugin{_suggest(name, schemas, installed=True)}"
            )
        elif not isinstance(table, dict):
            problems.append(f"plugins.{_quote(name)}: expected a table, got {_kind(table)}")
    plugins: dict[str, PluginSettings | None] = {}
    enabled: dict[str, bool] = {}
    for name, schema in schemas.items():
        table = tables.get(name, {})
        table = dict(table) if isinstance(table, dict) else {}
        on = table.pop("enabled", True)
        if not isinstance(on, bool):
            problems.append(f"plugins.{name}.enabled: expected true or false, got {_kind(on)}")
            on = True
        enabled[name] = on
        if name in unavailable:
            plugins[name] = None
            continue
        if schema is None:
            for key in table:
                problems.append(
                    f"plugins.{name}.{_quote(key)}: unknown key (plugin {name!r} takes no settings "
                    "other than 'enabled')"
                )
            plugins[name] = None
            continue
        # A disabled plugin's table need not validate: the operator may have switched it
        # off precisely because it is not configured.
        found: list[str] = []
        settings = _validate(schema, table, ("plugins", name), context, found, overridden, note)
        if on:
            problems.extend(found)
        plugins[name] = settings
    return plugins, enabled


def _validate(
    model: type[_M],
    data: Any,
    prefix: tuple[str, ...],
    context: Mapping[str, Any],
    problems: list[str],
    overridden: set[tuple[str, ...]] = frozenset(),  # type: ignore[assignment]
    note: str = "",
) -> _M | None:
    if not isinstance(data, dict):
        problems.append(f"{_path(prefix)}: expected a table, got {_kind(data)}")
        return None
    try:
        return model.model_validate(data, context=dict(context))
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            for loc, message in _describe(model, error):
                full = (*prefix, *loc)
                # Override marks are relative to [plugins]: (name, key, ...).
                rel = full[1:]
                marked = any(rel[:i] in overridden for i in range(1, len(rel) + 1))
                problems.append(f"{_path(full)}: {message}{note if marked else ''}")
        return None


_TYPE_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "an array",
    "tuple_type": "an array",
    "set_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "path_type": "a path (string)",
    "datetime_type": "a date-time",
    "date_type": "a date",
    "time_type": "a time",
    "decimal_type": "a number",
    "url_type": "a URL (string)",
}
_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def _describe(model: type[BaseModel], error: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """Turn one pydantic error into ``(loc, message)`` pairs without echoing the input
    (it may be a secret)."""
    loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return [(loc, "required")]
    if kind == "extra_forbidden":
        candidates = _fields_at(model, loc[:-1])
        return [(loc, f"unknown key{_suggest(str(loc[-1]), candidates)}")]
    if kind in _TYPE_EXPECTED:
        return [(loc, f"expected {_TYPE_EXPECTED[kind]}, got {_kind(error.get('input'))}")]
    if kind in _BOUNDS:
        op, name = _BOUNDS[kind]
        hint = _hint(model, loc)
        bound = ctx.get(name)
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return [(loc, f"must be {op} {bound}" + (f" ({hint})" if hint else ""))]
    if kind == "literal_error":
        return [(loc, f"expected {ctx.get('expected')}, got {_kind(error.get('input'))}")]
    if kind == "url_scheme":
        schemes = str(ctx.get("expected_schemes", ""))
        if "'http'" in schemes and "'https'" in schemes:
            return [(loc, "not an http(s) URL")]
        return [(loc, f"URL scheme must be {schemes}")]
    if kind == "url_parsing":
        return [(loc, f"not a valid URL ({ctx.get('error', 'unparsable')})")]
    if kind in ("string_too_short", "too_short", "string_too_long", "too_long"):
        count = ctx.get("min_length") if kind.endswith("short") else ctx.get("max_length")
        unit = "character" if kind.startswith("string") else "item"
        bound = "at least" if kind.endswith("short") else "at most"
        return [(loc, f"must have {bound} {count} {unit}{'' if count == 1 else 's'}")]
    if kind == "string_pattern_mismatch":
        return [(loc, f"must match the pattern {ctx.get('pattern')}")]
    if kind in ("value_error", "assertion_error"):
        message = str(ctx.get("error", error["msg"]))
        out = []
        for line in message.splitlines():
            # "key: message" from a model validator names the key at fault.
            m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*): (.+)$", line)
            if m and m.group(1) in _fields_at(model, loc):
                out.append(((*loc, m.group(1)), m.group(2)))
            else:
                out.append((loc, line))
        return out
    msg = str(error["msg"])
    return [(loc, msg[:1].lower() + msg[1:])]


def _descend(tp: Any, key: Any) -> Any:
    """The type found under ``key`` (field name, list index or dict key) of ``tp``."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _descend(typing.get_args(tp)[0], key)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            found = _descend(arg, key)
            if found is not None:
                return found
        return None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(key) if isinstance(key, str) else None
        return field.annotation if field is not None else None
    args = typing.get_args(tp)
    if isinstance(key, int) and origin in (list, tuple, set, frozenset) and args:
        return args[0]
    if isinstance(key, str) and isinstance(origin, type) and args and issubclass(origin, Mapping):
        return args[-1]
    return None


def _as_model(tp: Any) -> type[BaseModel] | None:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _as_model(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if (found := _as_model(arg)) is not None:
                return found
        return None
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    tp: Any = model
    for key in loc:
        tp = _descend(tp, key)
        if tp is None:
            return None
    return _as_model(tp)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    found = _model_at(model, loc)
    return list(found.model_fields) if found is not None else []


def _field_info(model: type[BaseModel], loc: tuple[Any, ...]) -> FieldInfo | None:
    if not loc or not isinstance(loc[-1], str):
        return None
    owner = _model_at(model, loc[:-1])
    return owner.model_fields.get(loc[-1]) if owner is not None else None


def _hint(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    info = _field_info(model, loc)
    extra = info.json_schema_extra if info is not None else None
    return extra.get("hint") if isinstance(extra, dict) else None  # type: ignore[return-value]


def _restart_changes(prefix: str, old: BaseModel, new: BaseModel) -> list[str]:
    out = []
    for name, info in type(new).model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("restart") and getattr(old, name) != getattr(new, name):
            out.append(f"{prefix}.{name}")
    return out


def _check_lnd_files(lnd: LndSettings, problems: list[str]) -> None:
    files = [("tls_cert", lnd.tls_cert)]
    if lnd.macaroon is not None and not _HEX.match(lnd.macaroon):
        files.append(("macaroon", Path(lnd.macaroon)))
    for key, file in files:
        if file is None:
            continue
        if not file.is_file():
            problems.append(f"lnd.{key}: file not found: {file}")
        elif not os.access(file, os.R_OK):
            problems.append(f"lnd.{key}: cannot read {file} (permission denied)")


def _suggest(
    name: str, candidates: typing.Iterable[str], *, tables: bool = False, installed: bool = False
) -> str:
    options = sorted(candidates)
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    if installed:
        return f" (installed plugins: {', '.join(options) or 'none'})"
    if tables:
        return " (expected [core], [lnd] or [plugins.NAME])"
    return f" (expected one of: {', '.join(options)})" if options else ""


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _quote(str(part))
    return out


def _quote(key: str) -> str:
    return key if _BARE_KEY.match(key) else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _kind(value: Any) -> str:
    """What a TOML value is, by type only (values may be secrets)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime):
        return "a date-time"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, time):
        return "a time"
    return type(value).__name__
