"""Reading configuration from the environment.

Every setting comes from an environment variable (or a `.env` file, see settings.py).
A missing or malformed required variable stops start-up with exactly one line that names
the variable, never a traceback, and never the value itself (it may be a secret).
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import environ
from eth_utils import is_address, to_checksum_address

_PRIVATE_KEY_RE = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
_MISSING = object()

#: What a process is (BOOKME_PROCESS_ROLE): the WSGI entry point sets "web" itself, the Procfile
#: names the worker and beat; manage.py commands, shells and tests are "command".
PROCESS_ROLES = ("web", "worker", "beat", "command")
#: Processes that never hold a key that sends transactions: the web process answers the
#: internet (and signs authorizations with the signer key, which is all it needs); beat only
#: schedules. Console actions that send are queued for the worker.
KEYLESS_ROLES = ("web", "beat")


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
    """Typed accessors over django-environ that fail with one line naming the variable.

    `from_files`: the names that came from the .env files settings.py read (shared by every
    process of a checkout), not from the process's own environment.
    """

    def __init__(self, env: environ.Env, *, from_files: frozenset[str] = frozenset()):
        self.env = env
        self.from_files = from_files

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

    def decimal(self, name: str, default=_MISSING, *, minimum: Decimal | None = None) -> Decimal:
        """An exact decimal (a percentage applied to wei, e.g. a fee bump): never rounded through a float."""
        raw = self._raw(name, default)
        try:
            value = Decimal(str(raw))
        except (TypeError, ValueError, InvalidOperation):
            raise ConfigurationError(name, "must be a number") from None
        if not value.is_finite():
            raise ConfigurationError(name, "must be a number")
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

    def choice(self, name: str, choices: tuple[str, ...], default=_MISSING) -> str:
        value = self._raw(name, default)
        if value not in choices:
            raise ConfigurationError(name, f"must be one of {', '.join(choices)}")
        return value

    def sending_key(self, name: str, *, role: str, required_in: tuple[str, ...] = ()) -> Secret | None:
        """A private key that sends transactions (the operator's, the contract owner's), as
        `private_key`, except that a process of a KEYLESS_ROLES role never holds one: given
        one in its own environment it refuses to start; one that came from a shared .env
        file is dropped from its environment unread. Required in the roles `required_in`."""
        if role in KEYLESS_ROLES:
            if self._raw(name, None) is None:
                return None
            if name in self.from_files:
                self.env.ENVIRON.pop(name, None)
                return None
            raise ConfigurationError(
                name, f"must not be set for the {role} process (BOOKME_PROCESS_ROLE={role}): only the worker "
                      "sends transactions"
            )
        return self.private_key(name, _MISSING if role in required_in else None)

    def db_url(self, name: str, default=_MISSING) -> dict:
        raw = self._raw(name, default)
        if not raw.startswith(("postgres://", "postgresql://", "pgsql://")):
            raise ConfigurationError(name, "must be a postgres:// URL")
        try:
            return environ.Env.db_url_config(raw)
        except Exception:  # django-environ raises several types for malformed URLs
            raise ConfigurationError(name, "is not a valid database URL") from None
