"""The purge guard's arithmetic on a clock the test moves: lockouts double per failure up to the
maximum, a success clears them, the global bucket refills at its rate, peer records are bounded."""

from __future__ import annotations

from sidecar.fronts.purge_guard import MAX_PEERS, PurgeGuard, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock, **overrides: float) -> PurgeGuard:
    settings = {"rate": 5.0, "burst": 10, "backoff": 1.0, "backoff_max": 60.0, **overrides}
    return PurgeGuard(settings["rate"], int(settings["burst"]), settings["backoff"], settings["backoff_max"],
                      clock=clock)


def test_each_failure_doubles_the_lockout_up_to_the_maximum() -> None:
    clock = Clock()
    purge = guard(clock, burst=1000)
    lockouts = []
    for _ in range(9):
        assert purge.wait("10.0.0.1") == 0
        lockouts.append(purge.failed("10.0.0.1"))
        assert purge.wait("10.0.0.1") == lockouts[-1]  # locked: no attempt taken
        clock.now += lockouts[-1]
    assert lockouts == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_a_lockout_is_per_peer() -> None:
    clock = Clock()
    purge = guard(clock)
    purge.failed("10.0.0.1")
    purge.failed("10.0.0.1")
    assert purge.wait("10.0.0.1") == 2 and purge.wait("10.0.0.2") == 0
    clock.now += 2
    assert purge.wait("10.0.0.1") == 0


def test_the_global_bucket_bounds_attempts_of_all_peers_together() -> None:
    clock = Clock()
    purge = guard(clock, rate=2.0, burst=3)
    assert [purge.wait(f"10.0.0.{i}") for i in range(3)] == [0, 0, 0]
    assert purge.wait("10.0.0.9") == 0.5  # one attempt more in half a second at 2 per second
    clock.now += 0.5
    assert purge.wait("10.0.0.9") == 0 and purge.wait("10.0.0.9") == 0.5


def test_peer_records_are_bounded_oldest_first() -> None:
    clock = Clock()
    purge = guard(clock)
    for i in range(MAX_PEERS + 10):
        purge.failed(f"peer-{i}")
    assert purge.failures("peer-0") == 0 and purge.failures(f"peer-{MAX_PEERS + 9}") == 1
    assert len(purge._peers) == MAX_PEERS


def test_refusals_are_logged_at_most_once_a_second_with_their_count() -> None:
    clock = Clock()
    purge = guard(clock)
    assert [purge.quiet("rate_limited") for _ in range(4)] == [1, None, None, None]
    clock.now += 1
    assert purge.quiet("rate_limited") == 4


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert [retry_after(s) for s in (0.01, 1.0, 1.2, 59.9)] == ["1", "1", "2", "60"]
