"""The daemon's error hierarchy."""

from __future__ import annotations

__all__ = ["ConfigError", "LdpError", "LndError", "PluginError", "StoreError"]


class LdpError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(LdpError):
    """The configuration is invalid.

    :ivar problems: one line per problem, each naming the file, key path or line and
        column, and what is expected.
    """

    def __init__(self, problems: list[str] | str, path: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.path = path
        head = f"{path}: " if path else ""
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(
            f"{head}invalid configuration\n{lines}" if len(self.problems) > 1 or path else self.problems[0]
        )


class PluginError(LdpError):
    """A plugin failed to load, to start, or broke its contract."""

    def __init__(self, plugin: str, message: str) -> None:
        self.plugin = plugin
        super().__init__(f"plugin {plugin!r}: {message}")


class LndError(LdpError):
    """A call to LND failed.

    :ivar code: the gRPC status code name (``"UNAVAILABLE"``, ``"UNKNOWN"``, ...).
    :ivar details: LND's message (never contains credentials).
    :ivar kind: the daemon's classification: ``"unreachable"``, ``"locked"``,
        ``"starting"``, ``"permission"``, ``"not_found"``, ``"invalid"``, ``"timeout"``,
        ``"other"``.
    """

    def __init__(self, code: str, details: str, kind: str = "other") -> None:
        self.code = code
        self.details = details
        self.kind = kind
        super().__init__(f"LND {code} ({kind}): {details}")


class StoreError(LdpError):
    """The database could not be read or written."""
