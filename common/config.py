"""Reading configuration from the environment.

Every setting comes from an environment variable (or a `.env` file, see settings.py).
A missing or malformed required variable stops start-up with exactly one line that names
the variable, never a traceback, and never the value itself (it may be a secret).
"""
from __future__ import annotations

import re

import environ
from eth_utils import is_address, to_checksum_address

_PRIVATE_KEY_RE = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
_MISSING = object()


class ConfigurationError(SystemExit):
    """Raised while settings load; SystemExit so every entry point prints one line and stops."""

    def __init__(self, name: str, why: str):
        self.variable = name
        super().__init__(f"bookme: configuration error: {name} {why}")


class Secret:
    """A value that must never be shown: repr/str hide it; `.reveal()` gives it to the code that signs."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other):  # pragma: no cover - comparisons are only for tests
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self):
        return hash(self._value)

    def __reduce__(self):
        raise TypeError("secrets are not picklable")


class Config:
    """Typed accessors over django-environ that fail with one line naming the variable."""

    def __init__(self, env: environ.Env):
        self.env = env

    def _raw(self, name: str, default):
        value = self.env.str(name, default=None)
        if value is None or value.strip() == "":
            if default is _MISSING:
                raise ConfigurationError(name, "is required but not set")
            return None if default is None else default
        return value.strip()

    def str(self, name: str, default=_MISSING) -> str:
        return self._raw(name, default)

    def bool(self, name: str, default=_MISSING) -> bool:
        raw = self._raw(name, default)
        if isinstance(raw, bool):
            return raw
        lowered = raw.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigurationError(name, "must be a boolean (true/false)")

    def int(self, name: str, default=_MISSING, *, minimum: int | None = None) -> int:
        raw = self._raw(name, default)
        if isinstance(raw, int):
            value = raw
        else:
            try:
                value = int(raw, 0)
            except ValueError:
                raise ConfigurationError(name, "must be an integer") from None
        if minimum is not None and value < minimum:
            raise ConfigurationError(name, f"must be at least {minimum}")
        return value

    def float(self, name: str, default=_MISSING, *, minimum: float | None = None) -> float:
        """Durations and ratios only. Money is never a float: amounts are integer base units (`int`)."""
        raw = self._raw(name, default)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigurationError(name, "must be a number") from None
        if minimum is not None and value < minimum:
            raise ConfigurationError(name, f"must be at least {minimum}")
        return value

    def list(self, name: str, default=_MISSING) -> list[str]:
        raw = self._raw(name, default)
        if isinstance(raw, list):
            return raw
        items = [item.strip() for item in raw.split(",") if item.strip()]
        if not items and default is _MISSING:
            raise ConfigurationError(name, "must be a non-empty comma-separated list")
        return items

    def url_list(self, name: str, default=_MISSING) -> list[str]:
        urls = self.list(name, default)
        for url in urls:
            if not re.match(r"^(https?|wss?)://[^\s/]+", url):
                raise ConfigurationError(name, "must be a comma-separated list of http(s):// or ws(s):// URLs")
        return urls

    def address(self, name: str, default=_MISSING) -> str | None:
        raw = self._raw(name, default)
        if raw is None:
            return None
        if not is_address(raw):
            raise ConfigurationError(name, "must be a 20-byte hex address (0x...)")
        return to_checksum_address(raw)

    def private_key(self, name: str, default=_MISSING) -> Secret | None:
        raw = self._raw(name, default)
        if raw is None:
            return None
        if not _PRIVATE_KEY_RE.match(raw) or int(raw, 16) == 0:
            raise ConfigurationError(name, "must be a 32-byte hex private key")
        return Secret(raw if raw.startswith("0x") else "0x" + raw)

    def db_url(self, name: str, default=_MISSING) -> dict:
        raw = self._raw(name, default)
        if not raw.startswith(("postgres://", "postgresql://", "pgsql://")):
            raise ConfigurationError(name, "must be a postgres:// URL")
        try:
            return environ.Env.db_url_config(raw)
        except Exception:  # django-environ raises several types for malformed URLs
            raise ConfigurationError(name, "is not a valid database URL") from None
