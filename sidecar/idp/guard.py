"""Protecting the IdP: a bound on concurrent introspection calls, safe retries, a circuit breaker.

RFC 7662 §2.1 introspection is a read-only query, so a repeated call cannot change state at the
IdP; what a retry can do is add load to an IdP that is already failing and spend the proxy's
time. Hence:

- **Deadline**: one introspection (waiting for a slot, every attempt, every backoff) gets
  ``idp.timeout`` seconds in all; each attempt gets what is left.
- **Concurrency bound**: at most ``idp.max_concurrent`` calls at once. A caller waits for a slot
  only while a fair budget (:func:`fair_budget`: half of ``idp.timeout``, at least
  ``idp.connect_timeout``) is still left, and is denied with ``saturated`` (our own limit, not
  an IdP failure) otherwise; so every call sent has that budget, and a healthy IdP that is
  merely busy cannot be blamed for the time callers spent queueing. Freed slots go to the
  waiting clients in turn (:class:`~sidecar.support.fair.FairSlots`, the client being the one
  admission charged the miss to): a client with many calls queued cannot make another's wait
  behind them.
- **Retries** (``idp.retries``, full-jitter exponential backoff from ``idp.retry_backoff``) only
  where the IdP did no work on the request: the connection could not be made (``refused``,
  ``connect_timeout``) or the IdP closed a connection without answering (``disconnected``,
  typically a keep-alive connection it had closed while idle). Never after a read timeout, a
  5xx, a 429 or a TLS failure: the request may be in progress at an overloaded IdP, or the
  failure is deterministic. A retry starts only if ``idp.connect_timeout`` is still left.
- **Circuit breaker**: after ``idp.breaker_failures`` consecutive IdP failures
  (:attr:`IdpFailure.is_idp_failure`: no connection, no answer, a 5xx, a 429, an unusable
  answer; never a per-token 4xx, never ``saturated``, never a 429; a timeout only when the call
  had a fair budget, which a retry may not have had: then the failure before it counts) the
  breaker opens and every call is denied at once (``breaker_open``) without touching the IdP. A
  background probe (introspection of a random, unknown token: any well-formed answer means the
  IdP works) runs every ``idp.breaker_open`` seconds (jittered) while open — the half-open state
  — and closes the breaker on success. A 503's ``Retry-After`` (RFC 9110 §10.2.3, capped at
  :data:`MAX_RETRY_AFTER`) sets how long the breaker stays open when that 503 opens it. A 429
  (RFC 6585 §4) is the IdP's limit on a rate one client's burst may have caused: it slows that
  client (admission.py's per-source back-off), never everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from sidecar.config import IdpConfig
from sidecar.idp.failures import IdpError, IdpFailure
from sidecar.idp.fetch import MAX_RETRY_AFTER
from sidecar.support.breaker import CLOSED, Breaker
from sidecar.support.fair import FairSlots
from sidecar.support.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")
_HINTS = (IdpFailure.HTTP_503,)  # answers whose Retry-After the breaker honours


def fair_budget(idp: IdpConfig) -> float:
    """The least time a sent call gets: half of ``idp.timeout``, at least ``idp.connect_timeout``."""
    return min(idp.timeout, max(idp.connect_timeout, idp.timeout / 2))


class _Registered:
    """The guard metrics of one registry, labelled by issuer (every issuer's guard shares them)."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.state = Gauge("sidecar_idp_breaker_state", "IdP circuit breaker: 0 closed, 1 open, 2 half-open",
                           ["issuer"], registry=r)
        self.rejections = Counter("sidecar_idp_rejections", "IdP calls not made: breaker_open or saturated",
                                  ["issuer", "reason"], registry=r)
        self.retries = Counter("sidecar_idp_retries", "Introspection attempts repeated, by the failure retried",
                               ["issuer", "result"], registry=r)
        self.probes = Counter("sidecar_idp_probes", "Background probes of an open breaker", ["issuer", "result"],
                              registry=r)


_REGISTERED: weakref.WeakKeyDictionary[CollectorRegistry, _Registered] = weakref.WeakKeyDictionary()


class _Issuer:
    """A counter seen by one issuer: ``.labels(x)`` is ``.labels(issuer, x)``."""

    def __init__(self, counter: Counter, issuer: str) -> None:
        self._counter, self._issuer = counter, issuer

    def labels(self, value: str) -> Counter:
        return self._counter.labels(self._issuer, value)


class GuardMetrics:
    def __init__(self, metrics: Metrics, issuer: str = "default") -> None:
        r = self.registry = metrics.registry
        shared = _REGISTERED.get(r)
        if shared is None:
            shared = _REGISTERED[r] = _Registered(r)
        self.state = shared.state.labels(issuer)
        self.rejections = _Issuer(shared.rejections, issuer)
        self.retries = _Issuer(shared.retries, issuer)
        self.probes = _Issuer(shared.probes, issuer)


class IdpGuard:
    """Runs one introspection under the deadline, the concurrency bound, retries and the breaker."""

    def __init__(self, idp: IdpConfig, metrics: Metrics, issuer: str = "default") -> None:
        """``issuer``: the configured issuer's name, the ``issuer`` label of its metrics."""
        self._timeout = idp.timeout
        self._connect_timeout = idp.connect_timeout
        self._fair_budget = fair_budget(idp)
        self._retries = idp.retries
        self._backoff = idp.retry_backoff
        self._slots = FairSlots(idp.max_concurrent)
        self.metrics = GuardMetrics(metrics, issuer)
        self.breaker = Breaker(idp.breaker_failures, idp.breaker_open, on_change=self.metrics.state.set)
        self._probe: Callable[[float], Awaitable[object]] | None = None
        self._prober: asyncio.Task[None] | None = None

    def set_probe(self, probe: Callable[[float], Awaitable[object]]) -> None:
        """The call that tells whether the IdP works again (an introspection of a random token)."""
        self._probe = probe

    def _check_breaker(self) -> None:
        """Raise at once while the IdP is known to be down (open, or a probe on its way)."""
        breaker = self.breaker
        if breaker.is_open:
            self.metrics.rejections.labels("breaker_open").inc()
            wait = max(breaker.open_until - time.monotonic(), 1.0)
            raise IdpError(IdpFailure.BREAKER_OPEN, "the IdP is known to be down",
                                 retry_after=min(math.ceil(wait), int(MAX_RETRY_AFTER)))

    def _failed(self, exc: IdpError) -> bool:
        """Count an IdP failure on the breaker; True when it opened it. A 503's Retry-After sets how
        long it stays open when that 503 opens it."""
        breaker = self.breaker
        opened = breaker.failure(_hint(exc))
        if opened:
            log.warning("idp breaker open", extra={"failures": breaker.failures, "result": exc.result,
                                                   "open_for": round(breaker.open_until - time.monotonic(), 3)})
        return opened

    def _succeeded(self) -> None:
        if self.breaker.is_open:
            log.warning("idp breaker closed")
        self.breaker.success()

    async def call(self, attempt: Callable[[float], Awaitable[T]]) -> T:
        self._check_breaker()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        await self._acquire(deadline - self._fair_budget)
        try:
            tries = 0
            blamed: IdpError | None = None  # the last failure that was the IdP's fault
            least = self._fair_budget  # the first attempt gets at least a fair budget
            while True:
                budget = max(deadline - loop.time(), least)
                try:
                    result = await attempt(budget)
                except IdpError as exc:
                    kind = exc.kind
                    if kind.is_idp_failure and kind is not IdpFailure.HTTP_429 and self._fair(kind, budget):
                        blamed = exc
                    if kind.retryable and tries < self._retries:
                        delay = random.uniform(0, self._backoff * 2**tries)  # noqa: S311 - jitter, not a secret
                        if deadline - loop.time() - delay >= self._connect_timeout:
                            tries += 1
                            least = self._connect_timeout
                            self.metrics.retries.labels(exc.result).inc()
                            await asyncio.sleep(delay)
                            continue
                    if kind.is_idp_failure and blamed is not None and self._failed(blamed):
                        self._start_probing()
                    raise
                self._succeeded()
                self._stop_probing()
                return result
        finally:
            self._slots.release()

    def _fair(self, kind: IdpFailure, budget: float) -> bool:
        """Whether a timeout is the IdP's fault: the call had the time a healthy IdP needs."""
        if kind is IdpFailure.TIMEOUT:
            return budget >= self._fair_budget
        if kind is IdpFailure.CONNECT_TIMEOUT:
            return budget >= self._connect_timeout
        return True

    async def _acquire(self, wait_until: float) -> None:
        try:
            async with asyncio.timeout_at(wait_until):
                await self._slots.acquire()
        except TimeoutError:
            self.metrics.rejections.labels("saturated").inc()
            raise IdpError(IdpFailure.SATURATED, "no introspection slot in time") from None

    def _start_probing(self) -> None:
        if self._probe is not None and (self._prober is None or self._prober.done()):
            self._prober = asyncio.create_task(self._probe_until_closed())

    def _stop_probing(self) -> None:
        prober, self._prober = self._prober, None
        if prober is not None and not prober.done() and prober is not asyncio.current_task():
            prober.cancel()

    async def _probe_until_closed(self) -> None:
        assert self._probe is not None
        while self.breaker.state != CLOSED:
            wait = max(self.breaker.open_until - time.monotonic(), 0.0)
            await asyncio.sleep(wait * random.uniform(1.0, 1.2) + 0.01)  # noqa: S311 - jitter
            self.breaker.half_open()
            try:
                async with asyncio.timeout(self._timeout):
                    await self._slots.acquire()
                try:
                    await self._probe(self._timeout)
                finally:
                    self._slots.release()
            except Exception as exc:  # any failure, even a bug, keeps the breaker open: fail closed
                self.metrics.probes.labels("failure").inc()
                result = exc.result if isinstance(exc, IdpError) else type(exc).__name__
                log.info("idp probe failed", extra={"result": result})
                self.breaker.reopen(_hint(exc))
                continue
            self.metrics.probes.labels("success").inc()
            self._succeeded()

    async def aclose(self) -> None:
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober


def _hint(exc: Exception) -> float:
    """The seconds a 503's ``Retry-After`` asks for (capped), else 0."""
    if isinstance(exc, IdpError) and exc.kind in _HINTS:
        return min(float(exc.retry_after), MAX_RETRY_AFTER)
    return 0.0
