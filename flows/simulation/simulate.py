"""Simulation: seeds through their scenario programs, many dialogues in flight at once.

Dialogues run as asyncio tasks on one event loop (the programs' ``aforward``; the LM calls are
awaited HTTP requests, or the embedded model in a thread behind its lock), ``run.concurrency``
of them in flight. One loop instead of a pool of threads: threads fighting over the GIL cost
more CPU than the calls themselves. A dialogue that fails (an endpoint down, an answer that
never parses) becomes a Reject with its reason; the others go on.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy

from flows.core.config import MasterConfig, Scenario
from flows.core.formats import to_messages, to_sharegpt
from flows.core.records import Dialogue, Reject
from flows.planning.jobs import Job, Later
from flows.simulation.dialogue_cache import DialogueStore, dialogue_key, replayed_calls
from modules.lm.budget import BUDGET_SPENT
from modules.lm.call_cache import CallRecord, dialogue_slot, ledger
from modules.lm.dspy_internals import InlineDSPyHelpers
from modules.lm.openai_compat import close_loop_sessions
from modules.scenarios.registry import program_version


@dataclass
class Outcome:
    job: Job
    dialogue: Dialogue | None
    reject: Reject | None
    calls: list[CallRecord] = field(default_factory=list)
    verified: bool = False  # quality checks (and the judge) already applied
    key: str | None = None  # the dialogue cache key, which also keys the stored verdicts
    settled: bool = True  # False: a verdict could not be reached and is retried next run


#: Reject stages a rerun retries: a run with one of them is not replayed.
UNSETTLED = ("simulate", "budget", "breaker")


def settled(outcomes: Sequence[Outcome]) -> bool:
    """Whether a run left nothing to retry (so replaying it is what a rerun would do)."""
    return all(
        (o.reject is None or o.reject.stage not in UNSETTLED) and o.settled for o in outcomes
    )


def program_inputs(job: Job) -> dict[str, Any]:
    """What a job's scenario program is called with."""
    seed = job.seed
    inputs: dict[str, Any] = {"question": seed.question, "reference": seed.reference}
    if job.scenario == "debate":
        inputs["rounds"] = job.rounds
    elif job.scenario == "analogy":
        if job.similar is None:
            raise LookupError("no similar question of the same domain in the retrieval pool")
        inputs["similar_question"] = job.similar.question
        inputs["similar_reference"] = job.similar.reference
    return inputs


def run_program(program: dspy.Module, job: Job) -> list[dict[str, Any]]:
    return program(**program_inputs(job)).turns


async def arun_program(program: dspy.Module, job: Job) -> list[dict[str, Any]]:
    """run_program on the event loop."""
    return (await program.acall(**program_inputs(job))).turns


def _error_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def simulate_one(
    job: Job,
    programs: Mapping[Scenario, dspy.Module],
    cfg: MasterConfig,
    versions: Mapping[Scenario, str],
    dialogues: DialogueStore | None = None,
    key: str | None = None,
) -> Outcome:
    """Simulate one dialogue that is not in the dialogue cache, and store it there under key."""
    seed = job.seed
    with ledger() as book, dialogue_slot(f"{seed.id}:{job.scenario}"):
        try:
            turns = run_program(programs[job.scenario], job)
        except Exception as exc:  # noqa: BLE001 - one dialogue's failure is recorded, not fatal
            return Outcome(job, None, _reject(job, exc), list(book.records))
    return _store(job, turns, list(book.records), cfg, versions, dialogues, key)


async def asimulate_one(
    job: Job,
    programs: Mapping[Scenario, dspy.Module],
    cfg: MasterConfig,
    versions: Mapping[Scenario, str],
    dialogues: DialogueStore | None = None,
    key: str | None = None,
    stamps: Stamps | None = None,
) -> Outcome:
    """simulate_one as a task on the event loop (its ledger and slot are the task's own)."""
    seed = job.seed
    with ledger() as book, dialogue_slot(f"{seed.id}:{job.scenario}"):
        try:
            turns = await arun_program(programs[job.scenario], job)
        except Exception as exc:  # noqa: BLE001 - one dialogue's failure is recorded, not fatal
            return Outcome(job, None, _reject(job, exc), list(book.records))
    return _store(job, turns, list(book.records), cfg, versions, dialogues, key, stamps)


def _reject(job: Job, exc: Exception) -> Reject:
    seed = job.seed
    return Reject(
        stage="simulate",
        reason=_error_reason(exc),
        source=seed.source,
        location=seed.meta.get("location"),
        seed_id=seed.id,
    )


def _store(
    job: Job,
    turns: list[dict[str, Any]],
    calls: list[CallRecord],
    cfg: MasterConfig,
    versions: Mapping[Scenario, str],
    dialogues: DialogueStore | None,
    key: str | None,
    stamps: Stamps | None = None,
) -> Outcome:
    if dialogues is not None and key is not None:
        dialogues.put(key, turns, calls, versions[job.scenario])
    return finished(job, turns, calls, cfg, versions, stamps)


#: Set when the run is being stopped from outside the simulation's thread (a Prefect flow run
#: cancelled: its engine raises in the main thread while shards run in task threads). Shards
#: then cancel their in-flight dialogues at once instead of running to the end; every call
#: and dialogue finished so far is already in the cache.
STOP = threading.Event()


async def _cancel_on_stop(tasks: list[asyncio.Task[None]]) -> None:
    while not STOP.is_set():
        await asyncio.sleep(0.25)
    for task in tasks:
        task.cancel()


class Breaker:
    """Stops dispatching when failures persist (a server down, every call rate-limited for
    minutes): `limit` dialogues failing in a row, with retries spent, trip it. The dialogues
    not started are reported as such, so the run ends with what it finished instead of
    spinning through every seed at the retry timeout. limit 0 disables it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0
        self.last = ""
        self.tripped = False

    def record(self, outcome: Outcome) -> None:
        if outcome.reject is None:
            self.in_a_row = 0
            return
        if BUDGET_SPENT in outcome.reject.reason:
            return  # the budget stopping calls is not the endpoint failing
        self.in_a_row += 1
        self.last = outcome.reject.reason
        if self.limit and self.in_a_row >= self.limit:
            self.tripped = True

    def reason(self) -> str:
        return (
            f"not started: {self.in_a_row} dialogues failed in a row, so the run stopped "
            f"dispatching (last failure: {self.last[:200]})"
        )


def not_started(job: Job, reason: str) -> Outcome:
    seed = job.seed
    reject = Reject(
        stage="breaker",
        reason=reason,
        source=seed.source,
        location=seed.meta.get("location"),
        seed_id=seed.id,
    )
    return Outcome(job, None, reject, [])


class Stamps:
    """The config hash and the roles' model fingerprints, computed once per stream() rather
    than once per dialogue (hashing the whole config is not free)."""

    def __init__(self, cfg: MasterConfig) -> None:
        self.cfg = cfg
        self.config_hash = cfg.fingerprint()
        self._lms: dict[str, dict[str, Any]] = {}

    def lm(self, role: str) -> dict[str, Any]:
        if role not in self._lms:
            self._lms[role] = self.cfg.lms.for_role(role).fingerprint()  # type: ignore[arg-type]
        return dict(self._lms[role])


def finished(
    job: Job,
    turns: list[dict[str, Any]],
    calls: list[CallRecord],
    cfg: MasterConfig,
    versions: Mapping[Scenario, str],
    stamps: Stamps | None = None,
) -> Outcome:
    """The Dialogue row of a finished dialogue, generated now or read from the cache."""
    stamps = stamps if stamps is not None and stamps.cfg is cfg else Stamps(cfg)
    seed = job.seed
    conversation = to_sharegpt(turns, cfg.scenarios.debate_mapping)
    roles_used = sorted({t["role"] for t in turns if t["role"]})
    flags = sorted({f"{t['speaker']}:{f}" for t in turns for f in t["flags"]})
    dialogue = Dialogue(
        seed_id=seed.id,
        source=seed.source,
        domain=seed.domain,
        scenario=job.scenario,
        turns=[{k: v for k, v in t.items() if k != "flags"} for t in turns],
        conversations=conversation,
        messages=to_messages(conversation),
        provenance={
            "program_version": versions[job.scenario],
            "config_hash": stamps.config_hash,
            "lms": {role: stamps.lm(role) for role in roles_used},
            "debate_rounds": job.rounds if job.scenario == "debate" else None,
            "similar_seed_id": job.similar.id if job.similar else None,
        },
        quality={"turn_flags": flags},
    )
    return Outcome(job, dialogue, None, calls)


_settings_lock = threading.Lock()
_settings_runs = 0  # runs in loop_settings now (shards in threads share the process's)
_settings_saved: tuple[tuple[int, int, int], float] = ((700, 10, 10), 0.005)  # the first's

#: The GIL's time slice while dialogues run (Python's default is 5 ms). The cache's writer
#: threads (modules/cache/group_commit.py) take the GIL whenever the loop lets go of it
#: (every socket and SQLite call), and the loop waits up to a whole slice to get it back,
#: with every response it has to hand on queued behind it (benchmarks: throughput).
SWITCH_INTERVAL_S = 0.0005


@contextlib.contextmanager
def loop_settings(gen0: int = 20_000) -> Iterator[None]:
    """The process's settings while dialogues run: fewer, cheaper cyclic-GC passes, and a
    short GIL slice (SWITCH_INTERVAL_S).

    A run holds hundreds of thousands of long-lived objects (seeds, the retrieval pool, the
    programs, finished outcomes), and a full collection walks all of them. What exists when the
    run starts is frozen (never scanned), and the young generation is collected every `gen0`
    allocations instead of 700. Memory is unaffected: almost nothing a dialogue allocates is
    cyclic. The settings are the process's: shards running in threads (the Prefect flow) share
    them, the first one in sets them and the last one out restores them."""
    global _settings_runs, _settings_saved
    with _settings_lock:
        if _settings_runs == 0:
            _settings_saved = gc.get_threshold(), sys.getswitchinterval()
            thresholds, interval = _settings_saved
            gc.set_threshold(max(gen0, thresholds[0]), *thresholds[1:])
            sys.setswitchinterval(min(interval, SWITCH_INTERVAL_S))
        _settings_runs += 1
        gc.freeze()
    try:
        yield
    finally:
        with _settings_lock:
            _settings_runs -= 1
            if _settings_runs == 0:
                thresholds, interval = _settings_saved
                gc.set_threshold(*thresholds)
                sys.setswitchinterval(interval)
                gc.unfreeze()


#: Cache-answered dialogues are made and handed on this many at a time (verified together,
#: so their judge calls, if any, run in parallel), never all at once.
HIT_CHUNK = 500


def stream(
    jobs: list[Job],
    programs: Mapping[Scenario, dspy.Module],
    cfg: MasterConfig,
    emit: Callable[[int, Outcome], None],
    dialogues: DialogueStore | None = None,
    after: Callable[[Outcome], Awaitable[None]] | None = None,
    after_hits: Callable[[list[Outcome]], None] | None = None,
    on_waiting: Callable[[], object] | None = None,
    later: Later | None = None,
    on_later: Callable[[list[Job]], None] | None = None,
) -> None:
    """Run every job with up to run.concurrency dialogues in flight; emit(job index, outcome)
    as each one is final, in the order they finish. Nothing is kept here once emitted.
    `on_waiting` is called once, when the first dialogues have made their first calls and the
    loop waits on the network (not at all when the cache answers every dialogue).

    Dialogues already in the dialogue cache are answered first, without the event loop, a
    chunk at a time (`after_hits` sees each chunk before it is emitted): a fully cached rerun
    costs one cache read per seed. `after` runs in a simulated dialogue's own task once it is
    stored (the run's verification and judge call, overlapping the other dialogues).

    `later` yields more jobs while the first run (the analogy jobs as planning finds their
    partners, flows/planning/jobs.py:Plan): it is iterated on a thread of its own, and each
    batch joins the queue as it comes (`on_later` sees it first), numbered after `jobs`; its
    cached dialogues are verified by `after` in a task each. The stream ends once `later` is
    exhausted and every job is final; an error raised by `later` stops the run and is
    raised here. When the breaker trips, `later` is stopped at its next batch (Later.stop)
    and the jobs it still owed are reported not started, without waiting for their
    partners."""
    versions = {name: program_version(p) for name, p in programs.items()}
    stamps = Stamps(cfg)
    todo: list[tuple[int, Job, str | None]] = []
    hits: list[tuple[int, Outcome]] = []

    def key_of(job: Job) -> str | None:
        return dialogue_key(job, versions[job.scenario], cfg.lms) if dialogues else None

    def emit_hits() -> None:
        if after_hits is not None:
            after_hits([o for _, o in hits])
        for index, outcome in hits:
            emit(index, outcome)
        hits.clear()

    def cached(job: Job, key: str | None) -> Outcome | None:
        """The job's dialogue as an earlier run made it, if the dialogue cache has it."""
        hit = dialogues.get(key) if dialogues is not None and key is not None else None
        if hit is None:
            return None
        outcome = finished(job, hit["turns"], replayed_calls(hit), cfg, versions, stamps)
        outcome.key = key
        return outcome

    for index, job in enumerate(jobs):
        key = key_of(job)
        outcome = cached(job, key)
        if outcome is None:
            todo.append((index, job, key))
            continue
        hits.append((index, outcome))
        if len(hits) >= HIT_CHUNK:
            emit_hits()
    emit_hits()
    if not todo and later is None:
        return
    breaker = Breaker(cfg.run.breaker_failures)

    def order(item: tuple[int, Job, str | None]) -> tuple[int, int]:
        # Popped from the end: the longest dialogues start first, then job order. The last
        # dialogues in flight are then short ones, so the run's tail (fewer than
        # run.concurrency dialogues left, the endpoint idling) is as short as it can be.
        return item[1].model_turns, -item[0]

    queue = sorted(todo, key=order)
    feeding = later is not None  # more jobs may still come
    wake = asyncio.Event()  # set when jobs join the queue, or feeding ends
    failure: list[BaseException] = []
    halt = threading.Event()  # the feeding thread stops at its next batch
    tasks: list[asyncio.Future[None]] = []
    numbered = len(jobs)
    waited = False

    def waiting() -> None:
        nonlocal waited
        if on_waiting is not None and not waited:
            waited = True
            on_waiting()

    async def finish_hit(index: int, outcome: Outcome) -> None:
        if after is not None:
            await after(outcome)
        emit(index, outcome)

    async def work() -> None:
        while True:
            if not queue:
                if not feeding:
                    return
                wake.clear()
                await wake.wait()
                continue
            index, job, key = queue.pop()
            if breaker.tripped:
                emit(index, not_started(job, breaker.reason()))
                continue
            outcome = await asimulate_one(job, programs, cfg, versions, dialogues, key, stamps)
            outcome.key = key
            breaker.record(outcome)
            if breaker.tripped:
                halt.set()  # the partner search stops at its next batch
            if after is not None:
                await after(outcome)
            emit(index, outcome)

    def arrive(batch: list[Job]) -> None:  # on the loop
        nonlocal numbered
        if on_later is not None:
            on_later(batch)
        queued = False
        for job in batch:
            index, numbered = numbered, numbered + 1
            if breaker.tripped:  # not started, nor looked up (a stopped search's job has
                emit(index, not_started(job, breaker.reason()))  # no partner)
                continue
            key = key_of(job)
            outcome = cached(job, key)
            if outcome is None:
                bisect.insort(queue, (index, job, key), key=order)
                queued = True
            else:
                tasks.append(asyncio.ensure_future(finish_hit(index, outcome)))
        wake.set()
        if queued:
            asyncio.get_running_loop().call_soon(waiting)  # once its first calls are out

    def fed(exc: BaseException | None) -> None:  # on the loop
        nonlocal feeding
        feeding = False
        wake.set()
        if exc is not None:
            failure.append(exc)
            for task in tasks:
                task.cancel()

    def feed(loop: asyncio.AbstractEventLoop) -> None:  # on its own thread
        def call(fn: Callable[..., None], *args: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the run stopped
                loop.call_soon_threadsafe(fn, *args)

        error: BaseException | None = None
        try:
            for batch in later or ():
                if halt.is_set():
                    break
                if batch:  # (an empty batch: a step of the search done)
                    call(arrive, batch)
            if halt.is_set() and later is not None:
                rest = later.stop()
                if rest:
                    call(arrive, rest)
        except BaseException as exc:  # noqa: BLE001 - raised by stream() on the loop's side
            error = exc
        call(fed, error)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(InlineDSPyHelpers())
        feeder = None
        if later is not None:
            feeder = threading.Thread(target=feed, args=(loop,), name="plan-later", daemon=True)
            feeder.start()
        try:
            workers = cfg.run.concurrency if feeding else min(cfg.run.concurrency, len(todo))
            # No DSPy history entries: nothing in a run reads them (our ledger and cache
            # record every call), and DSPy keeps up to 10,000 per LM, per predictor and
            # globally, each with the whole prompt (benchmarks: growth). Nor DSPy's trace,
            # which only optimizers read (they run their own programs). Prompts, requests
            # and cache keys are unaffected.
            with dspy.context(disable_history=True, trace=None):
                tasks.extend(asyncio.ensure_future(work()) for _ in range(workers))
                watcher = asyncio.ensure_future(_cancel_on_stop(tasks))
                try:
                    if todo:
                        await asyncio.sleep(0)  # every task runs up to its first call's I/O
                        waiting()
                    while True:  # hits of later batches add tasks while these run
                        running = list(tasks)
                        try:
                            await asyncio.gather(*running)
                        except asyncio.CancelledError:
                            if not failure:
                                raise
                            break
                        if len(tasks) == len(running):
                            break
                finally:
                    watcher.cancel()
            if failure:
                raise failure[0]
        finally:
            halt.set()
            await close_loop_sessions()

    with loop_settings():
        _run_async(main())


def _run_async(coro: Coroutine[Any, Any, None]) -> None:
    """asyncio.run, or in a fresh thread when this thread already runs a loop (Prefect)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=target, name="simulate")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
