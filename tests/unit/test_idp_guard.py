"""The IdP guard without a network: deadline, concurrency bound, retry policy, circuit breaker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sidecar.config import ConfigError, IdpConfig, from_mapping
from sidecar.idp.failures import IdpError, IdpFailure
from sidecar.idp.guard import IdpGuard
from sidecar.support.breaker import CLOSED, HALF_OPEN, OPEN
from sidecar.support.metrics import Metrics


def guard(**overrides: Any) -> IdpGuard:
    values: dict[str, Any] = {"timeout": 1.0, "connect_timeout": 0.1, "retries": 1, "retry_backoff": 0.0,
                              "breaker_failures": 3, "breaker_open": 0.05}
    values.update(overrides)
    return IdpGuard(IdpConfig(**values), Metrics())


class Script:
    """An attempt that fails with the given results (``http_<status>`` or a kind) in turn, then
    answers "ok"."""

    def __init__(self, *failures: str, retry_after: int = 1, delay: float = 0.0) -> None:
        self.failures = list(failures)
        self.calls = 0
        self.timeouts: list[float] = []
        self.retry_after = retry_after
        self.delay = delay

    async def __call__(self, timeout: float) -> str:
        self.calls += 1
        self.timeouts.append(timeout)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failures:
            raise failure(self.failures.pop(0), self.retry_after)
        return "ok"


def failure(result: str, retry_after: int = 1) -> IdpError:
    if result.startswith("http_") and result[5:].isdigit():
        status = int(result[5:])
        return IdpError(IdpFailure.of_status(status), "scripted", status=status, retry_after=retry_after)
    return IdpError(IdpFailure(result), "scripted", retry_after=retry_after)


def sample(g: IdpGuard, name: str, labels: dict[str, str] | None = None) -> float:
    value = g.metrics.registry.get_sample_value(name, {"issuer": "default", **(labels or {})})
    return float(value or 0.0)


@pytest.mark.parametrize("kind", ["refused", "connect_timeout", "disconnected"])
async def test_a_failure_before_the_idp_did_any_work_is_retried_once(kind: str) -> None:
    g, attempt = guard(), Script(kind)
    assert await g.call(attempt) == "ok"
    assert attempt.calls == 2
    assert sample(g, "sidecar_idp_retries_total", {"result": kind}) == 1.0


@pytest.mark.parametrize("kind", ["timeout", "http_500", "http_503", "http_429", "tls_untrusted", "reset",
                                  "truncated", "garbage", "dns"])
async def test_a_failure_that_may_have_reached_the_idp_or_will_repeat_is_not_retried(kind: str) -> None:
    g, attempt = guard(), Script(kind)
    with pytest.raises(IdpError):
        await g.call(attempt)
    assert attempt.calls == 1


async def test_retries_stop_at_the_configured_count() -> None:
    g, attempt = guard(retries=2), Script("refused", "refused", "refused")
    with pytest.raises(IdpError):
        await g.call(attempt)
    assert attempt.calls == 3


async def test_no_retry_starts_when_less_than_a_connect_timeout_is_left_of_the_deadline() -> None:
    g, attempt = guard(timeout=0.3, connect_timeout=0.25), Script("refused", delay=0.1)
    with pytest.raises(IdpError):
        await g.call(attempt)
    assert attempt.calls == 1


async def test_each_attempt_gets_only_what_is_left_of_the_deadline() -> None:
    g, attempt = guard(timeout=1.0, connect_timeout=0.05), Script("refused", delay=0.2)
    assert await g.call(attempt) == "ok"
    assert attempt.timeouts[0] <= 1.0 and attempt.timeouts[1] <= 1.0 - 0.2


async def test_the_breaker_opens_after_n_consecutive_failures_and_then_answers_without_calling() -> None:
    g, attempt = guard(retries=0), Script("http_500", "http_500", "http_500")
    for _ in range(3):
        with pytest.raises(IdpError):
            await g.call(attempt)
    assert g.breaker.state == OPEN and sample(g, "sidecar_idp_breaker_state") == OPEN
    with pytest.raises(IdpError) as raised:
        await g.call(attempt)
    assert raised.value.kind is IdpFailure.BREAKER_OPEN and attempt.calls == 3
    assert sample(g, "sidecar_idp_rejections_total", {"reason": "breaker_open"}) == 1.0
    await g.aclose()


async def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    g, attempt = guard(retries=0), Script("http_500", "http_500")
    for _ in range(2):
        with pytest.raises(IdpError):
            await g.call(attempt)
    assert await g.call(attempt) == "ok"
    attempt.failures = ["http_500", "http_500"]
    for _ in range(2):
        with pytest.raises(IdpError):
            await g.call(attempt)
    assert g.breaker.state == CLOSED


async def test_a_429_never_opens_the_breaker_it_slows_the_source_that_called() -> None:
    g, attempt = guard(retries=0, breaker_failures=1), Script(*["http_429"] * 10, retry_after=7)
    for _ in range(10):
        with pytest.raises(IdpError) as raised:
            await g.call(attempt)
        assert raised.value.throttled and raised.value.retry_after == 7  # for admission's per-source back-off
    assert attempt.calls == 10 and g.breaker.state == CLOSED
    await g.aclose()


async def test_the_background_probe_closes_the_breaker_once_the_idp_answers() -> None:
    g = guard(retries=0, breaker_failures=1)
    probe = Script("http_503")  # the first probe fails, the second succeeds
    half_open_seen: list[int] = []

    async def watched(timeout: float) -> str:
        half_open_seen.append(g.breaker.state)
        return await probe(timeout)

    g.set_probe(watched)
    with pytest.raises(IdpError):
        await g.call(Script("timeout"))
    await wait_for(lambda: g.breaker.state == CLOSED)
    assert probe.calls == 2 and half_open_seen == [HALF_OPEN, HALF_OPEN]
    assert sample(g, "sidecar_idp_probes_total", {"result": "failure"}) == 1.0
    assert await g.call(Script()) == "ok"


async def test_a_probe_that_raises_a_bug_keeps_the_breaker_open() -> None:
    g = guard(retries=0, breaker_failures=1, breaker_open=0.02)
    calls = 0

    async def broken(timeout: float) -> str:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    g.set_probe(broken)
    with pytest.raises(IdpError):
        await g.call(Script("timeout"))
    await wait_for(lambda: calls >= 2)
    assert g.breaker.state != CLOSED
    await g.aclose()


@pytest.mark.parametrize("result", ["http_400", "http_401", "http_403", "http_404"])
async def test_answers_about_one_token_never_open_the_breaker(result: str) -> None:
    g, attempt = guard(retries=1, breaker_failures=3), Script(*[result] * 5)
    for _ in range(5):
        with pytest.raises(IdpError) as raised:
            await g.call(attempt)
        assert raised.value.result == result  # still a fail-closed 503 for that request
    assert attempt.calls == 5 and g.breaker.state == CLOSED  # not retried either


async def test_a_4xx_between_idp_failures_neither_counts_nor_resets_the_count() -> None:
    g, attempt = guard(retries=0, breaker_failures=3), Script("http_500", "http_400", "http_500", "http_500")
    for _ in range(3):
        with pytest.raises(IdpError):
            await g.call(attempt)
    assert g.breaker.state == CLOSED  # two IdP failures so far
    with pytest.raises(IdpError):
        await g.call(attempt)
    assert g.breaker.state == OPEN
    await g.aclose()


async def test_breaker_failures_zero_turns_the_breaker_off() -> None:
    g, attempt = guard(retries=0, breaker_failures=0), Script(*["http_503"] * 10)
    for _ in range(10):
        with pytest.raises(IdpError):
            await g.call(attempt)
    assert attempt.calls == 10 and g.breaker.state == CLOSED


async def test_no_more_than_max_concurrent_calls_run_and_a_caller_without_a_slot_is_saturated() -> None:
    g = guard(max_concurrent=2, timeout=0.3, breaker_failures=1)
    running = peak = 0

    async def slow(timeout: float) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.2)
        running -= 1
        return "ok"

    results = await asyncio.gather(*(g.call(slow) for _ in range(6)), return_exceptions=True)
    assert peak == 2
    saturated = [r for r in results if isinstance(r, IdpError)]
    assert saturated and all(r.kind is IdpFailure.SATURATED for r in saturated)
    assert g.breaker.state == CLOSED  # our own limit is not an IdP failure


async def test_every_call_sent_has_at_least_half_of_the_timeout_and_later_callers_are_saturated() -> None:
    g, attempt = guard(max_concurrent=1, timeout=1.0, connect_timeout=0.1), Script(delay=0.3)
    results = await asyncio.gather(*(g.call(attempt) for _ in range(5)), return_exceptions=True)
    assert attempt.calls >= 1 and all(budget >= 0.5 for budget in attempt.timeouts)
    assert {r.kind for r in results if isinstance(r, IdpError)} <= {IdpFailure.SATURATED}
    assert results.count("ok") == attempt.calls


async def test_a_busy_but_healthy_idp_is_not_blamed_for_the_time_callers_spent_queueing() -> None:
    g = guard(max_concurrent=1, timeout=1.0, connect_timeout=0.1, breaker_failures=1)

    async def healthy_in_a_quarter_second(budget: float) -> str:
        """Like a real call: the answer comes after 0.25 s, or the budget runs out first."""
        await asyncio.sleep(min(budget, 0.25))
        if budget < 0.25:
            raise IdpError(IdpFailure.TIMEOUT, "scripted")
        return "ok"

    results = await asyncio.gather(*(g.call(healthy_in_a_quarter_second) for _ in range(6)),
                                   return_exceptions=True)
    assert not [r for r in results if isinstance(r, IdpError) and r.kind is IdpFailure.TIMEOUT]
    assert g.breaker.state == CLOSED


async def test_a_retry_that_times_out_on_what_was_left_is_not_blamed_the_refusal_before_it_is(
    captured_logs: pytest.LogCaptureFixture,
) -> None:
    g = guard(timeout=1.0, connect_timeout=0.1, retries=1, breaker_failures=1)
    with pytest.raises(IdpError) as raised:
        await g.call(Script("refused", "timeout", delay=0.6))  # the retry has < 0.5 s left
    assert raised.value.kind is IdpFailure.TIMEOUT and g.breaker.state == OPEN
    [opened] = [r for r in captured_logs.records if r.getMessage() == "idp breaker open"]
    assert getattr(opened, "result", None) == "refused"
    await g.aclose()


@pytest.mark.parametrize(("key", "value"), [("max_concurrent", 0), ("retries", -1), ("retries", 9),
                                            ("retry_backoff", -0.1), ("breaker_failures", -1),
                                            ("breaker_open", 0)])
def test_invalid_guard_settings_name_their_key(key: str, value: float, tmp_path: Any) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    raw = {"idp": {"introspection_endpoint": "https://idp/introspect", "client_id": "s",
                   "cert_file": str(cert), "key_file": str(cert), key: value}}
    with pytest.raises(ConfigError) as raised:
        from_mapping(raw)
    assert raised.value.key == f"idp.{key}"


async def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")
