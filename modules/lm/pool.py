"""Replica pools: one role's calls spread over several servers of the same model.

A ``Pool`` belongs to one role's OpenAI-compatible engine (modules/lm/openai_compat.py), below
the call cache: which replica answered never reaches a cache key. The engine asks the pool
for a replica before each HTTP attempt and tells it how the attempt went; the pool decides:

- **Balancing.** A call goes to the replica in rotation with the fewest calls in flight that
  still has room under its limit; ties go round robin.
- **Failover.** A replica that refuses connections or times out is taken out of rotation at
  once; one that answers 5xx ``EJECT_AFTER_5XX`` times in a row too (a random 500 now and
  then is the server's business, not a reason to drop it). It stays out for a cool-down
  (``COOL_DOWN_S``, doubled after each failed probe up to ``MAX_COOL_DOWN_S``), then is
  probed with GET /models; an answer of any status below 500 puts it back.
- **Back-pressure (AIMD).** Each replica has its own in-flight limit: halved (never below
  1) on a 429 or when its smoothed latency rises to ``LATENCY_RISE`` times its baseline,
  plus 1 per success, up to the role's ``max_concurrency`` (no cap when unset). A decrease
  acts once per round of calls: only calls sent after the last decrease can cause the next.
- **All down.** When every replica is out of rotation the call still goes, to the replica
  due back first: a role with one server behaves as it did before pools, and a run whose
  servers are all dead fails its calls and trips the run's breaker.

Example:
    pool = Pool(["http://gpu-a:8000/v1", "http://gpu-b:8000/v1"], cap=32)
    replica = await pool.acquire()
    ...  # POST to replica.base
    pool.succeeded(replica, latency_s)  # or pool.failed(replica, kind, latency_s)

Decided: Retry-After holds the call that got the 429, not the replica: the call moves to
another replica in rotation at once, or, with none left, sleeps Retry-After before its next
round; the replica keeps serving other calls at its halved limit (a server's 429 often
answers one burst, and a replica held still for every 429 of a 5% rate would never serve).

Decided: the latency rule triggers at 3x the baseline, not 2x: a batching server (vLLM) is
slower per call at batch 64 than at batch 1 while it serves more calls a second, and a
latency cut there would cost throughput; a queueing server (llama.cpp, ``fake_llm.py
--capacity``) passes 3x once the queue is twice its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal

log = logging.getLogger("master")

COOL_DOWN_S = 5.0
MAX_COOL_DOWN_S = 60.0
EJECT_AFTER_5XX = 5
LATENCY_RISE = 3.0
#: weight of a new latency sample in the replica's moving average
EWMA_ALPHA = 0.2
#: how far the baseline moves toward a higher average per call: a lasting change of workload
#: (longer replies) becomes the new normal instead of cutting the limit forever
BASELINE_DRIFT = 0.01
#: a sleeping caller looks again at least this often (a replica may come back by the clock)
WAKE_EVERY_S = 1.0

#: How an attempt failed, as the pool tells them apart.
Failure = Literal["down", "overloaded", "server_error", "other"]


def _bucket(seconds: float) -> int:
    """A latency's histogram bucket: 16 per doubling (4.4% wide), mergeable across shards."""
    return round(16 * math.log2(max(seconds, 1e-4)))


class ReplicaStats:
    """A replica's counts for summary.json; picklable and added up across shards."""

    def __init__(self) -> None:
        self.calls = 0  # attempts sent to it
        self.failures = 0  # attempts that failed, whatever the cause
        self.ejections = 0  # times it was taken out of rotation
        self.latency: Counter[int] = Counter()  # histogram of successful attempts' latency

    def merge(self, other: ReplicaStats) -> None:
        self.calls += other.calls
        self.failures += other.failures
        self.ejections += other.ejections
        self.latency.update(other.latency)

    def p50_latency_s(self) -> float | None:
        total = sum(self.latency.values())
        if not total:
            return None
        seen = 0
        for bucket in sorted(self.latency):
            seen += self.latency[bucket]
            if 2 * seen >= total:
                return round(2 ** (bucket / 16), 4)
        raise AssertionError("unreachable")

    def block(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "failures": self.failures,
            "ejections": self.ejections,
            "p50_latency_s": self.p50_latency_s(),
        }


class Replica:
    """One server of a pool: its base URL, load, limit, health and counts."""

    def __init__(self, base: str, cap: float) -> None:
        self.base = base.rstrip("/")
        self.cap = cap
        self.limit = cap
        self.in_flight = 0
        self.down_until = 0.0  # 0: in rotation
        self.cool_down = COOL_DOWN_S
        self.probing = False
        self.errors_in_a_row = 0
        self.ewma: float | None = None
        self.baseline: float | None = None
        self.decreased_at = -math.inf
        self.stats = ReplicaStats()

    def __repr__(self) -> str:
        state = "down" if self.down_until else "up"
        return f"Replica({self.base!r}, {state}, in_flight={self.in_flight}, limit={self.limit})"

    @property
    def down(self) -> bool:
        return self.down_until > 0


class Pool:
    """The replicas of one role, shared by the threads and event loops of its engine.

    Args:
        bases: the replicas' base URLs (``http://host:port/v1``), in the order configured.
        cap: the most calls in flight on one replica (the role's ``max_concurrency``); None
            for no cap.
        clock: a monotonic clock (tests give their own).
        name: what the log lines call the pool (its role).
    """

    def __init__(
        self,
        bases: Sequence[str],
        cap: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "pool",
    ) -> None:
        if not bases:
            raise ValueError("a pool needs at least one replica")
        self.replicas = [Replica(base, float(cap) if cap else math.inf) for base in bases]
        self.clock = clock
        self.name = name
        self._next = 0  # round-robin cursor
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def __repr__(self) -> str:
        return f"Pool({[r.base for r in self.replicas]})"

    # ---------------------------------------------------------------- choosing

    def _take(self, avoid: Iterable[Replica]) -> Replica | None:
        """The replica for the next attempt, counted in flight; None when all are full.
        In rotation and not in `avoid` first; then in rotation; then the one due back first."""
        avoid = set(map(id, avoid))
        up = [r for r in self.replicas if not r.down]
        fresh = [r for r in up if id(r) not in avoid]
        group = fresh or up or [min(self.replicas, key=lambda r: r.down_until)]
        open_ = [r for r in group if r.in_flight < r.limit]
        if not open_:
            return None
        least = min(r.in_flight for r in open_)
        n = len(self.replicas)
        order = {id(r): (i - self._next) % n for i, r in enumerate(self.replicas)}
        chosen = min((r for r in open_ if r.in_flight == least), key=lambda r: order[id(r)])
        self._next = (self.replicas.index(chosen) + 1) % n
        chosen.in_flight += 1
        chosen.stats.calls += 1
        return chosen

    def _due(self) -> list[Replica]:
        """Replicas whose cool-down is over and that nobody probes yet (marked as probed)."""
        now = self.clock()
        due = [r for r in self.replicas if r.down and not r.probing and r.down_until <= now]
        for r in due:
            r.probing = True
        return due

    def _sleep_s(self) -> float:
        now = self.clock()
        waits = [r.down_until - now for r in self.replicas if r.down and r.down_until > now]
        return max(0.01, min([WAKE_EVERY_S, *waits]))

    def others_up(self, avoid: Iterable[Replica]) -> bool:
        """Whether a replica in rotation is left that this call has not tried."""
        tried = set(map(id, avoid))
        with self._lock:
            return any(not r.down and id(r) not in tried for r in self.replicas)

    def all_down(self) -> bool:
        with self._lock:
            return all(r.down for r in self.replicas)

    def acquire_sync(
        self, avoid: Iterable[Replica] = (), probe: Callable[[str], bool] | None = None
    ) -> Replica:
        """A replica for one attempt (threads): waits while every candidate is full. Replicas
        due for a probe are probed first, in this thread, with `probe(base) -> answered`."""
        avoid = list(avoid)
        while True:
            with self._lock:
                due = self._due() if probe is not None else []
            for replica in due:
                self.probed(replica, probe(replica.base))  # type: ignore[misc]
            with self._room:
                chosen = self._take(avoid)
                if chosen is not None:
                    return chosen
                self._room.wait(self._sleep_s())

    async def acquire(
        self,
        avoid: Iterable[Replica] = (),
        probe: Callable[[str], Awaitable[bool]] | None = None,
    ) -> Replica:
        """A replica for one attempt (event loops): waits while every candidate is full.
        Replicas due for a probe are probed by a task of their own, `probe(base) ->
        answered`, so no call waits on a probe."""
        avoid = list(avoid)
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                due = self._due() if probe is not None else []
                chosen = self._take(avoid)
                if chosen is None:
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append((loop, waiter))
                    sleep = self._sleep_s()
            for replica in due:
                loop.create_task(self._aprobe(replica, probe))  # type: ignore[arg-type]
            if chosen is not None:
                return chosen
            try:
                await asyncio.wait_for(asyncio.shield(waiter), sleep)
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    if (loop, waiter) in self._waiters:
                        self._waiters.remove((loop, waiter))

    async def _aprobe(self, replica: Replica, probe: Callable[[str], Awaitable[bool]]) -> None:
        try:
            answered = await probe(replica.base)
        except Exception:  # noqa: BLE001 - a probe that fails in any way is a dead replica
            answered = False
        self.probed(replica, answered)

    # ---------------------------------------------------------------- outcomes

    def _wake(self) -> None:
        """Wake every waiting thread and task (called with the lock held)."""
        self._room.notify_all()
        for loop, waiter in self._waiters:
            if not waiter.done():
                with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                    loop.call_soon_threadsafe(_resolve, waiter)
        self._waiters.clear()

    def succeeded(self, replica: Replica, latency_s: float, sent_at: float | None = None) -> None:
        """An attempt answered 200 after `latency_s`; `sent_at`: the clock when it was sent."""
        with self._lock:
            replica.in_flight -= 1
            replica.errors_in_a_row = 0
            replica.cool_down = COOL_DOWN_S
            replica.stats.latency[_bucket(latency_s)] += 1
            if replica.ewma is None:
                replica.ewma = latency_s
            else:
                replica.ewma += EWMA_ALPHA * (latency_s - replica.ewma)
            if replica.baseline is None or replica.ewma < replica.baseline:
                replica.baseline = replica.ewma
            else:
                replica.baseline += BASELINE_DRIFT * (replica.ewma - replica.baseline)
            sent = self.clock() - latency_s if sent_at is None else sent_at
            if replica.ewma > LATENCY_RISE * replica.baseline and sent >= replica.decreased_at:
                self._decrease(replica)
            else:
                replica.limit = min(replica.cap, replica.limit + 1)
            self._wake()

    def release(self, replica: Replica) -> None:
        """An attempt ended without an answer to judge the replica by (it was cancelled)."""
        with self._lock:
            replica.in_flight -= 1
            self._wake()

    def failed(self, replica: Replica, kind: Failure, sent_at: float | None = None) -> None:
        """An attempt failed: `down` (refused, reset, timed out), `overloaded` (429),
        `server_error` (5xx) or `other` (a 4xx: the request's fault, not the server's)."""
        with self._lock:
            replica.in_flight -= 1
            replica.stats.failures += 1
            was_down = replica.down
            if kind == "overloaded":
                sent = self.clock() if sent_at is None else sent_at
                if sent >= replica.decreased_at:
                    self._decrease(replica)
            elif kind == "down":
                self._eject(replica)
            elif kind == "server_error":
                replica.errors_in_a_row += 1
                if replica.errors_in_a_row >= EJECT_AFTER_5XX:
                    self._eject(replica)
            ejected = replica.down and not was_down
            self._wake()
        if ejected:
            log.warning(
                "%s: replica %s out of rotation for %.0f s (%s)",
                self.name, replica.base, replica.cool_down, _WHY[kind],
            )  # fmt: skip

    def probed(self, replica: Replica, answered: bool) -> None:
        """A probe's result: back in rotation (limit from 1, growing by AIMD) or out longer."""
        with self._lock:
            replica.probing = False
            if answered:
                replica.down_until = 0.0
                replica.errors_in_a_row = 0
                replica.limit = min(replica.cap, 1.0)
                replica.ewma = replica.baseline = None
            else:
                replica.cool_down = min(MAX_COOL_DOWN_S, replica.cool_down * 2)
                replica.down_until = self.clock() + replica.cool_down
            self._wake()
        if answered:
            log.info("%s: replica %s answers again, back in rotation", self.name, replica.base)

    def _decrease(self, replica: Replica) -> None:
        replica.limit = max(1.0, min(replica.limit, replica.in_flight + 1) / 2)
        replica.decreased_at = self.clock()

    def _eject(self, replica: Replica) -> None:
        if len(self.replicas) == 1:
            return  # one server: nowhere else to send its calls, the retries decide
        if not replica.down:
            replica.stats.ejections += 1
        replica.down_until = self.clock() + replica.cool_down
        replica.errors_in_a_row = 0

    def stats(self) -> dict[str, ReplicaStats]:
        """Each replica's counts, by base URL (a copy)."""
        with self._lock:
            out = {}
            for r in self.replicas:
                copy = ReplicaStats()
                copy.merge(r.stats)
                out[r.base] = copy
            return out

    def describe_down(self) -> str:
        """One phrase for an error when every replica is out: how many, which."""
        names = ", ".join(r.base for r in self.replicas)
        return f"all {len(self.replicas)} replicas are out of rotation ({names})"


_WHY: dict[str, str] = {
    "down": "refused, reset or timed out",
    "server_error": f"{EJECT_AFTER_5XX} server errors in a row",
}


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
