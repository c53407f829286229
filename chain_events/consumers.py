"""How the indexer hands decoded, stored events to their consumer.

The indexer (store, scanner, replay, retries, reorg rollback) keeps the event store in step
with the chain; what the events mean is the consumer's business. Events are keyed by the
contract's booking id (`chain_booking_id`), and the consumer keeps its own rows per key. Its
app registers it once (`register_consumer`, from its `AppConfig.ready()`); the indexer asks
for it (`get_consumer`) whenever it applies events, always inside its own transaction.

The lock order every writer keeps (chain_events.ingest, "THE LOCK ORDER"): new event rows are
inserted first, before any lock; then the consumer's rows of a key (`EventConsumer.lock`,
`EventConsumer.hold`); writes to that key's stored event rows after. A writer that updated event
rows first and locked the consumer's rows after would wait on one that holds the rows and then
writes the events: PostgreSQL aborts one of the two.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from .decoding import DecodedLog


class Superseded(Exception):
    """The range applied before this one (in another transaction) did not commit: this one
    must roll back too, or its cursor move would skip the failed range."""


class ApplyTurn:
    """Where a scanner range stands against the range before it, when ranges are applied in
    parallel transactions (chain_events.lanes): `locked()` says this range holds its keys' row
    locks (the next range may start: it will wait on those locks, never the other way round),
    `wait()` blocks until the range before committed (Superseded if it did not). Rows that two
    ranges may both write (rows shared between keys, the cursor) are written only after
    `wait()`. This base class is the turn of a lone range: no waiting."""

    def locked(self) -> None:
        pass

    def wait(self) -> None:
        pass


NO_TURN = ApplyTurn()


@dataclass
class ApplyOutcome:
    """What handing a set of keys to the consumer did."""

    bookings: int = 0  # keys the consumer applied to rows of its own
    orphans: int = 0  # keys it holds no row for (and recorded as such)
    failed_bookings: list[str] = field(default_factory=list)
    failed_events: int = 0
    dead_letters: int = 0
    fallback: bool = False  # the keys were applied one by one after the bulk attempt failed


class EventConsumer(ABC):
    """What the indexer needs from the consumer of its events."""

    @abstractmethod
    def lock(self, chain_id: int, contract: str, keys: list[str]) -> None:
        """Lock the consumer's rows of `keys` (sorted, no duplicates), before the indexer
        writes event rows that already exist (removes, revives or claims them)."""

    @abstractmethod
    def hold(self, chain_id: int, contract: str, keys: list[str]) -> Mapping[str, object]:
        """Lock and read the consumer's rows of `keys` (sorted) for `apply`: {key: row} of the
        keys it has rows for. Taken outside the savepoints `apply` runs in, so a failed bulk
        attempt keeps the locks for the one-by-one retry."""

    @abstractmethod
    def apply(
        self, chain_id: int, contract: str, histories: Mapping[str, Iterable[DecodedLog]], held: Mapping[str, object],
        *, actor: str, now, turn: ApplyTurn,
    ) -> Collection[str]:
        """Make the consumer agree with each key's whole history (every stored event not
        REMOVED, in any order), inside the caller's transaction; `held` is what `hold` gave.
        Writes rows other keys (or the range applied in parallel) may share only after
        `turn.wait()`. Returns the keys it holds no row for (recorded as orphans). Raising
        fails the keys given: the indexer then retries them one by one."""


_consumer: EventConsumer | None = None


def register_consumer(consumer: EventConsumer) -> None:
    """Make `consumer` the one the indexer hands its events to (replacing any before)."""
    global _consumer
    _consumer = consumer


def get_consumer() -> EventConsumer:
    if _consumer is None:
        raise RuntimeError(
            "no chain event consumer is registered: the app that consumes the events registers one in its "
            "AppConfig.ready() (chain_events.consumers.register_consumer); is it in INSTALLED_APPS?"
        )
    return _consumer
