"""weir SDK for Python handlers (componentize-py).

A weir handler is a WebAssembly component that the weir host calls with a
batch of cluster events that already passed the app's declarative pre-filter.
The handler gives each event an outcome (done, retry later, reject) and asks
for effects (restart or reload a service, publish an event). The host runs
each batch on a fresh instance under fuel, memory, time and log caps, acks or
retries events, and executes granted effects once.

The author writes one function, decorated with :func:`handler`::

    from weir_sdk import Batch, handler

    @handler
    def handle(batch: Batch) -> None:
        if any(e.touches_my_domains() for e in batch.events):
            batch.restart("dovecot.service")

Build (from the app's directory, with this package's parent on the path)::

    componentize-py -d <weir>/wit -w handler componentize app -p . -p <weir>/guests/python -o app.wasm

The contract is ``weir:handler@0.2.0`` (``wit/handler.wit``). This package is
the same API as the Rust SDK (``guests/sdk``) and the JavaScript one
(``guests/js/weir.js``).
"""

from __future__ import annotations

import json as _json
import sys
from typing import Any, Callable, List, Optional, Union

import wit_world
from wit_world.imports import domains as _domains
from wit_world.imports import log as _log
from wit_world.imports import node as _node
from wit_world.imports import types as _types

__all__ = ["VERSION", "Batch", "Event", "handler", "node", "domains", "log"]

#: The version of this SDK; ``weir new`` pins it in the projects it writes.
VERSION = "0.2.0"


class Event:
    """One event of a batch: the WIT record ``event`` plus helpers.

    Attributes: ``id`` (stable identity: ``Nats-Msg-Id``, else
    ``<stream>:<sequence>``), ``name`` (e.g. ``"user-domain-changed"``),
    ``source`` (e.g. ``"module/ldapproxy4"``, ``"cluster"``; set by the host
    from the subject), ``origin_node`` (``int`` or ``None`` for a cluster-wide
    event), ``domains`` (normalised by the host), ``payload`` (``bytes`` as
    published), ``attempt`` (1-based), ``sequence`` (stream sequence, 0
    outside a stream), ``published_ms`` (ms since the Unix epoch, 0 if unknown).
    """

    __slots__ = (
        "id",
        "name",
        "source",
        "origin_node",
        "domains",
        "payload",
        "attempt",
        "sequence",
        "published_ms",
    )

    def __init__(self, raw: Any) -> None:
        self.id: str = raw.id
        self.name: str = raw.name
        self.source: str = raw.source
        self.origin_node: Optional[int] = raw.origin_node
        self.domains: List[str] = list(raw.domains)
        self.payload: bytes = bytes(raw.payload)
        self.attempt: int = raw.attempt
        self.sequence: int = raw.sequence
        self.published_ms: int = raw.published_ms

    def text(self) -> Optional[str]:
        """The payload as UTF-8 text, or ``None`` if it is not valid UTF-8."""
        try:
            return self.payload.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def json(self) -> Any:
        """The payload parsed as JSON.

        Raises ``ValueError`` if the payload is not UTF-8 JSON (NS8's
        ``acl-changed`` carries a bare string). ``NaN`` and ``Infinity`` are
        refused, as in the Rust and JavaScript SDKs.
        """
        text = self.text()
        if text is None:
            raise ValueError("payload is not UTF-8")
        return _json.loads(text, parse_constant=_refuse_constant)

    def is_local(self) -> bool:
        """True if the event names this node as its origin; a cluster-wide
        event is not local."""
        return _node.is_local(self.origin_node)

    def touches_my_domains(self) -> bool:
        """True if any of the event's (normalised) domains is one of the app's."""
        return any(_domains.is_mine(d) for d in self.domains)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


Effect = Union[_types.Effect_Restart, _types.Effect_Reload, _types.Effect_Publish]


class Batch:
    """One batch of events plus the answer being built for it. Every event
    starts as done; identical effects collapse into one."""

    def __init__(self, events: List[Any]) -> None:
        #: The events, in stream order.
        self.events: List[Event] = [Event(e) for e in events]
        self._outcomes: List[Any] = [_types.Outcome_Done() for _ in self.events]
        self._effects: List[Effect] = []

    def retry(self, index: int, delay_ms: int) -> None:
        """Redeliver event ``index`` after ``delay_ms`` milliseconds (the host
        caps the delay at one hour; after the app's ``delivery.max_deliver``
        deliveries, default 5, the event is dead-lettered). Raises ``IndexError`` if ``index`` is out of bounds,
        ``ValueError`` if ``delay_ms`` is not an integer from 0 to 2**32 - 1
        (the WIT type is ``u32``)."""
        self._check(index)
        if not isinstance(delay_ms, int) or not 0 <= delay_ms <= 0xFFFFFFFF:
            raise ValueError(f"retry delay {delay_ms!r} is not a u32 of milliseconds")
        self._outcomes[index] = _types.Outcome_Retry(delay_ms)

    def reject(self, index: int, reason: str) -> None:
        """Reject event ``index`` for good: the host dead-letters it with
        ``reason``. Raises ``IndexError`` if out of bounds."""
        self._check(index)
        self._outcomes[index] = _types.Outcome_Reject(str(reason))

    def restart(self, unit: str) -> None:
        """Ask for a restart of service ``unit``; executed only if the app's
        ``[app.grants] restart`` names it."""
        self.effect(_types.Effect_Restart(str(unit)))

    def reload(self, unit: str) -> None:
        """Ask for a reload of service ``unit``; executed only if the app's
        ``[app.grants] reload`` names it."""
        self.effect(_types.Effect_Reload(str(unit)))

    def publish(self, name: str, payload: Union[str, bytes]) -> None:
        """Publish event ``name`` with ``payload`` (a ``str`` is sent as
        UTF-8) as this app (source ``module/<app>``); only names the app's
        ``[app.grants] publish`` lists are published."""
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        self.effect(_types.Effect_Publish(_types.Message(str(name), data)))

    def effect(self, effect: Effect) -> None:
        """Add ``effect`` unless an identical one was asked for."""
        if effect not in self._effects:
            self._effects.append(effect)

    @property
    def effects(self) -> List[Effect]:
        """The effects asked for so far, in order, without duplicates."""
        return list(self._effects)

    def outcome(self, index: int) -> Any:
        """The outcome currently set for event ``index``."""
        return self._outcomes[index]

    def result(self) -> Any:
        """The answer returned to the host (WIT ``batch-result``)."""
        return _types.BatchResult(self._outcomes, self._effects)

    def _check(self, index: int) -> None:
        if not 0 <= index < len(self.events):
            raise IndexError(f"event index {index} out of bounds (batch of {len(self.events)})")


def handler(fn: Callable[[Batch], None]) -> Callable[[Batch], None]:
    """Make ``fn(batch)`` the component's ``handle``: defines ``WitWorld`` in
    ``fn``'s module, the class componentize-py exports. An exception fails the
    batch like a trap: the host then runs its events one at a time and
    retries the ones that still fail."""

    class WitWorld(wit_world.WitWorld):
        def handle(self, batch: List[Any]) -> Any:
            b = Batch(batch)
            fn(b)
            return b.result()

    setattr(sys.modules[fn.__module__], "WitWorld", WitWorld)
    return fn


class _Node:
    """This host's identity."""

    @staticmethod
    def id() -> int:
        """This node's numeric id, e.g. ``1``."""
        return _node.id()

    @staticmethod
    def name() -> str:
        """This node's name, e.g. ``"node1"``."""
        return _node.name()

    @staticmethod
    def is_local(origin: Optional[int]) -> bool:
        """True if ``origin`` is this node; ``None`` is never local."""
        return _node.is_local(origin)


class _Domains:
    """The domains this app serves on this node."""

    @staticmethod
    def mine() -> List[str]:
        """The app's configured domains, normalised."""
        return list(_domains.mine())

    @staticmethod
    def is_mine(domain: str) -> bool:
        """True if ``domain`` is one of the app's after normalisation."""
        return _domains.is_mine(domain)


class _Log:
    """Logging into the host's log, under the app's log budget."""

    @staticmethod
    def trace(message: str) -> None:
        _log.log(_log.Level.TRACE, str(message))

    @staticmethod
    def debug(message: str) -> None:
        _log.log(_log.Level.DEBUG, str(message))

    @staticmethod
    def info(message: str) -> None:
        _log.log(_log.Level.INFO, str(message))

    @staticmethod
    def warn(message: str) -> None:
        _log.log(_log.Level.WARN, str(message))

    @staticmethod
    def error(message: str) -> None:
        _log.log(_log.Level.ERROR, str(message))


node = _Node()
domains = _Domains()
log = _Log()
