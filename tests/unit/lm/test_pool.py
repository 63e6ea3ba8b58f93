"""The replica pool's decisions, on a clock the tests move: balancing, ejection and probes,
AIMD back-pressure per replica, and the counts summary.json reports."""

from __future__ import annotations

import asyncio
import math

import pytest

from modules.lm.pool import (
    COOL_DOWN_S,
    EJECT_AFTER_5XX,
    LATENCY_RISE,
    Pool,
    ReplicaStats,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool_of(n: int, cap: int | None = None) -> tuple[Pool, Clock]:
    clock = Clock()
    return Pool([f"http://r{i}/v1" for i in range(n)], cap, clock=clock), clock


def names(replicas: list) -> list[str]:
    return [r.base.removeprefix("http://").removesuffix("/v1") for r in replicas]


def test_calls_go_to_the_replica_with_fewest_in_flight_and_ties_round_robin() -> None:
    pool, _ = pool_of(3)
    first = [pool.acquire_sync() for _ in range(3)]
    assert names(first) == ["r0", "r1", "r2"]  # all tied: in turn
    pool.succeeded(first[1], 0.1)  # r1 now has the fewest in flight
    assert names([pool.acquire_sync()]) == ["r1"]
    for r in pool.replicas:
        r.in_flight = 0
    assert names([pool.acquire_sync() for _ in range(4)]) == ["r2", "r0", "r1", "r2"]


def test_a_refusing_replica_leaves_rotation_at_once_and_a_probe_brings_it_back() -> None:
    pool, clock = pool_of(2)
    dead = pool.acquire_sync()
    pool.failed(dead, "down")
    assert dead.down and dead.stats.ejections == 1
    assert names([pool.acquire_sync() for _ in range(3)]) == ["r1", "r1", "r1"]
    probes: list[str] = []

    def probe(base: str) -> bool:
        probes.append(base)
        return True

    clock.now += COOL_DOWN_S - 0.1
    pool.acquire_sync(probe=probe)
    assert probes == []  # still cooling down
    clock.now += 0.2
    pool.acquire_sync(probe=probe)
    assert probes == [dead.base] and not dead.down
    assert dead.limit == 1  # back from 1, growing by a call at a time


def test_a_failed_probe_doubles_the_cool_down() -> None:
    pool, clock = pool_of(2)
    dead = pool.acquire_sync()
    pool.failed(dead, "down")
    clock.now += COOL_DOWN_S
    pool.acquire_sync(probe=lambda base: False)
    assert dead.down and dead.down_until == pytest.approx(clock.now + 2 * COOL_DOWN_S)
    assert dead.stats.ejections == 1  # still the same time out of rotation


def test_server_errors_eject_only_when_they_keep_coming() -> None:
    pool, _ = pool_of(2)
    r0 = pool.replicas[0]
    for _ in range(EJECT_AFTER_5XX - 1):
        r0.in_flight += 1
        pool.failed(r0, "server_error")
    r0.in_flight += 1
    pool.succeeded(r0, 0.1)  # an answer in between: the run of errors starts again
    for _ in range(EJECT_AFTER_5XX - 1):
        r0.in_flight += 1
        pool.failed(r0, "server_error")
    assert not r0.down
    r0.in_flight += 1
    pool.failed(r0, "server_error")
    assert r0.down and r0.stats.failures == 2 * (EJECT_AFTER_5XX - 1) + 1


def test_a_client_error_never_ejects_a_replica() -> None:
    pool, _ = pool_of(2)
    r0 = pool.replicas[0]
    for _ in range(10):
        r0.in_flight += 1
        pool.failed(r0, "other")
    assert not r0.down and r0.stats.failures == 10


def test_a_lone_replica_is_never_ejected() -> None:
    pool, _ = pool_of(1)
    only = pool.acquire_sync()
    pool.failed(only, "down")
    assert not only.down and only.stats.ejections == 0


def test_when_every_replica_is_down_the_call_goes_to_the_one_due_back_first() -> None:
    pool, clock = pool_of(2)
    a, b = pool.acquire_sync(), pool.acquire_sync()
    pool.failed(b, "down")
    clock.now += 1
    pool.failed(a, "down")
    assert pool.all_down()
    assert pool.acquire_sync() is b
    assert "all 2 replicas are out of rotation" in pool.describe_down()


def test_a_call_that_failed_on_one_replica_is_offered_another() -> None:
    pool, _ = pool_of(3)
    tried = [pool.acquire_sync()]
    pool.failed(tried[0], "server_error")
    assert pool.others_up(tried)
    second = pool.acquire_sync(tried)
    assert second is not tried[0]
    tried.append(second)
    pool.failed(second, "server_error")
    third = pool.acquire_sync(tried)
    assert third not in tried
    assert not pool.others_up([*tried, third])


def test_a_429_halves_that_replicas_limit_and_no_other() -> None:
    pool, clock = pool_of(2, cap=16)
    r0, r1 = pool.replicas
    calls = [pool.acquire_sync() for _ in range(12)]  # six on each
    pool.failed(calls[0], "overloaded", sent_at=clock.now)
    assert r0.limit == 3  # half of the six it had in flight, this one included
    assert r1.limit == 16
    # a 429 of a call sent before that cut does not cut again: one cut per round
    pool.failed(calls[2], "overloaded", sent_at=clock.now - 1)
    assert r0.limit == 3
    clock.now += 1
    for _ in range(3):
        pool.succeeded(calls[4], 0.1, sent_at=clock.now)
        calls[4].in_flight += 1
    assert r0.limit == 6  # plus one per success


def test_the_limit_grows_by_one_per_success_up_to_max_concurrency() -> None:
    pool, _ = pool_of(1, cap=4)
    only = pool.replicas[0]
    only.limit = 1
    for expected in (2, 3, 4, 4):
        only.in_flight += 1
        pool.succeeded(only, 0.1)
        assert only.limit == expected


def test_no_cap_means_no_limit_until_overload() -> None:
    pool, _ = pool_of(1)
    assert pool.replicas[0].limit == math.inf
    assert len([pool.acquire_sync() for _ in range(500)]) == 500


def test_rising_latency_halves_the_limit() -> None:
    pool, clock = pool_of(2, cap=64)
    r0 = pool.replicas[0]
    r0.in_flight = 40  # each success below ends one call and a new one starts
    for _ in range(5):
        pool.succeeded(r0, 0.2, sent_at=clock.now)
        r0.in_flight += 1
    assert r0.limit == 64
    clock.now += 1
    for _ in range(30):
        pool.succeeded(r0, 0.2 * LATENCY_RISE * 2, sent_at=clock.now)
        r0.in_flight += 1
        if r0.limit < 64:
            break
    assert r0.limit == 20  # half of the 40 in flight when it rose
    assert pool.replicas[1].limit == 64


def test_a_full_pool_makes_callers_wait_until_a_call_ends() -> None:
    pool, _ = pool_of(2, cap=1)

    async def scenario() -> list[str]:
        a, b = await pool.acquire(), await pool.acquire()
        waiting = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        pool.succeeded(b, 0.01)
        third = await asyncio.wait_for(waiting, 2)
        return names([a, b, third])

    assert asyncio.run(scenario()) == ["r0", "r1", "r1"]


def test_an_async_probe_runs_beside_the_calls() -> None:
    pool, clock = pool_of(2)
    dead = pool.replicas[0]
    dead.in_flight += 1
    pool.failed(dead, "down")
    clock.now += COOL_DOWN_S

    async def scenario() -> None:
        answered = asyncio.Event()

        async def probe(base: str) -> bool:
            answered.set()
            return True

        chosen = await pool.acquire(probe=probe)
        assert chosen is pool.replicas[1]  # the call does not wait for the probe
        await asyncio.wait_for(answered.wait(), 2)
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert not dead.down


def test_replica_counts_add_up_across_shards_with_their_median_latency() -> None:
    a, b = ReplicaStats(), ReplicaStats()
    pool, _ = pool_of(1)
    only = pool.replicas[0]
    for latency in (0.1, 0.2, 0.2):
        only.in_flight += 1
        pool.succeeded(only, latency)
    a.merge(pool.stats()[only.base])
    b.calls, b.failures, b.ejections = 4, 1, 1
    b.latency.update({16 * 3: 2})  # two calls of 8 s
    a.merge(b)
    block = a.block()
    assert block["calls"] == 4 and block["failures"] == 1 and block["ejections"] == 1
    assert block["p50_latency_s"] == pytest.approx(0.2, rel=0.05)
    assert ReplicaStats().block()["p50_latency_s"] is None


def test_a_replica_leaving_and_rejoining_rotation_is_logged_once_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    pool = Pool(["http://r0/v1", "http://r1/v1"], clock=clock, name="strong")
    dead = pool.acquire_sync()
    second = pool.acquire_sync()
    pool.failed(dead, "down")
    dead.in_flight += 1
    pool.failed(dead, "down")  # already out: no second line
    pool.succeeded(second, 0.1)
    clock.now += COOL_DOWN_S
    with caplog.at_level("INFO", logger="master"):
        pool.acquire_sync(probe=lambda base: True)
    lines = [r.getMessage() for r in caplog.records if r.name == "master"]
    assert lines == [
        "strong: replica http://r0/v1 out of rotation for 5 s (refused, reset or timed out)",
        "strong: replica http://r0/v1 answers again, back in rotation",
    ]
