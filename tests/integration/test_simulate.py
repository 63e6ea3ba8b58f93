"""The simulation loop's scheduling, without any LM: stub programs record what starts when."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import dspy

from flows.core.config import load_config
from flows.core.records import Seed
from flows.planning.jobs import Job, Later
from flows.simulation.simulate import Outcome, stream


class Stub(dspy.Module):
    """A scenario program that takes a moment per model turn and records when it started."""

    def __init__(self, started: list[str]) -> None:
        super().__init__()
        self.started = started

    async def aforward(self, question: str, reference: str, **knobs: Any) -> dspy.Prediction:
        self.started.append(question)
        await asyncio.sleep(0.01)
        return dspy.Prediction(turns=[])


def simulate(jobs: list[Job], programs: dict[str, Any], cfg: Any) -> list[Outcome]:
    """stream() collected in job order."""
    outcomes: list[Any] = [None] * len(jobs)
    stream(jobs, programs, cfg, outcomes.__setitem__)  # type: ignore[arg-type]
    return outcomes


def _jobs() -> list[Job]:
    jobs = []
    for i in range(6):
        seed = Seed.create("s", "math", f"q{i}", "r")
        scenario = "debate" if i % 3 == 2 else "error_correction"
        jobs.append(Job(seed=seed, scenario=scenario, rounds=2 if i == 5 else 1))
    return jobs


def test_the_longest_dialogues_start_first_and_outcomes_keep_job_order(tmp_path: Path) -> None:
    cfg = load_config(None, environ={"MASTER__RUN__CONCURRENCY": "1"})
    started: list[str] = []
    stub = Stub(started)
    programs = {"error_correction": stub, "debate": stub, "analogy": stub}
    jobs = _jobs()
    outcomes = simulate(jobs, programs, cfg)  # type: ignore[arg-type]
    # five model turns (the 2-round debate), then three (job order among equals)
    assert started == ["q5", "q0", "q1", "q2", "q3", "q4"]
    assert [o.job.seed.question for o in outcomes] == [f"q{i}" for i in range(6)]


def test_on_waiting_is_called_once_when_the_first_dialogues_wait_on_their_first_calls() -> None:
    """The prewarm's trigger (flows/runs/stages.py:simulate_stage): after every slot has
    started its first dialogue and before any has finished; never for a run with nothing to
    simulate."""
    cfg = load_config(None, environ={"MASTER__RUN__CONCURRENCY": "3"})
    started: list[str] = []
    stub = Stub(started)
    programs = {"error_correction": stub, "debate": stub, "analogy": stub}
    outcomes: list[Any] = [None] * 6
    seen: list[tuple[int, int]] = []

    def on_waiting() -> None:
        seen.append((len(started), sum(o is not None for o in outcomes)))

    stream(_jobs(), programs, cfg, outcomes.__setitem__, on_waiting=on_waiting)  # type: ignore[arg-type]
    assert seen == [(3, 0)]
    assert all(o is not None for o in outcomes)
    stream([], programs, cfg, outcomes.__setitem__, on_waiting=on_waiting)  # type: ignore[arg-type]
    assert seen == [(3, 0)]


class SliceProbe(Stub):
    """A Stub that notes the GIL slice its dialogues run under."""

    def __init__(self) -> None:
        super().__init__([])
        self.intervals: list[float] = []

    async def aforward(self, question: str, reference: str, **knobs: Any) -> dspy.Prediction:
        self.intervals.append(sys.getswitchinterval())
        return await super().aforward(question, reference, **knobs)


def test_dialogues_run_under_the_loop_settings_and_a_run_restores_them() -> None:
    from flows.simulation.simulate import SWITCH_INTERVAL_S

    cfg = load_config(None, environ={})
    probe = SliceProbe()
    before, interval, frozen = gc.get_threshold(), sys.getswitchinterval(), gc.get_freeze_count()
    assert interval > SWITCH_INTERVAL_S  # Python's default, 5 ms
    simulate(_jobs(), {"error_correction": probe, "debate": probe, "analogy": probe}, cfg)  # type: ignore[arg-type]
    assert probe.intervals == [SWITCH_INTERVAL_S] * 6
    assert gc.get_threshold() == before
    assert sys.getswitchinterval() == interval
    assert gc.get_freeze_count() == frozen


def test_overlapping_runs_in_threads_restore_the_settings_once_the_last_ends() -> None:
    """Prefect runs shards in threads: the first run in must not restore under the second."""
    from flows.simulation.simulate import SWITCH_INTERVAL_S, loop_settings

    before, interval = gc.get_threshold(), sys.getswitchinterval()
    first, second = threading.Event(), threading.Event()

    def a() -> None:
        with loop_settings():
            first.set()
            second.wait(5)

    thread = threading.Thread(target=a)
    thread.start()
    first.wait(5)
    with loop_settings():
        raised = gc.get_threshold()
        second.set()
        thread.join()
        assert gc.get_threshold() == raised != before  # still set: a run is on
        assert sys.getswitchinterval() == SWITCH_INTERVAL_S
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    assert sys.getswitchinterval() == interval


def _later(jobs: list[Job], delay: float) -> Future[list[Job]]:
    """The jobs, as a planner thread hands them over after `delay` seconds."""
    future: Future[list[Job]] = Future()
    threading.Timer(delay, future.set_result, args=(jobs,)).start()
    return future


class Signalling(Stub):
    """A Stub that sets `first` once a dialogue has started."""

    def __init__(self, started: list[str]) -> None:
        super().__init__(started)
        self.first = threading.Event()

    async def aforward(self, question: str, reference: str, **knobs: Any) -> dspy.Prediction:
        self.first.set()
        return await super().aforward(question, reference, **knobs)


def _analogy(n: int, start: int) -> list[Job]:
    partner = Seed.create("s", "math", "partner", "r")
    return [
        Job(seed=Seed.create("s", "math", f"a{i}", "r"), scenario="analogy", similar=partner)
        for i in range(start, start + n)
    ]


def test_later_jobs_join_while_the_ready_ones_run() -> None:
    """Planning's analogy batches (flows/planning/jobs.py:Plan.later): the ready jobs do not
    wait for them; each batch joins as it comes, numbered after the ready jobs."""
    cfg = load_config(None, environ={"MASTER__RUN__CONCURRENCY": "2"})
    started: list[str] = []
    stub = Signalling(started)
    programs = {"error_correction": stub, "debate": stub, "analogy": stub}
    joined: list[int] = []
    emitted: dict[int, str] = {}

    def later() -> Any:
        assert stub.first.wait(10)  # a ready dialogue is under way before any partner
        yield _analogy(3, 0)
        yield _analogy(2, 3)

    def emit(index: int, outcome: Outcome) -> None:
        emitted[index] = outcome.job.seed.question

    stream(
        _jobs(), programs, cfg, emit, later=Later(later()), on_later=lambda b: joined.append(len(b))
    )  # type: ignore[arg-type]
    assert joined == [3, 2]
    assert emitted == {**{i: f"q{i}" for i in range(6)}, **{6 + i: f"a{i}" for i in range(5)}}
    assert started[0].startswith("q") and sorted(started) == sorted(emitted.values())
    # nothing ready at once: the run waits for the batches
    emitted.clear()
    stub.first.set()
    stream([], programs, cfg, emit, later=Later(iter([_analogy(2, 0)])))  # type: ignore[arg-type]
    assert emitted == {0: "a0", 1: "a1"}


def test_a_failure_of_the_later_jobs_stops_the_run_and_is_raised() -> None:
    cfg = load_config(None, environ={"MASTER__RUN__CONCURRENCY": "1"})
    stub = Stub([])
    programs = {"error_correction": stub, "debate": stub, "analogy": stub}

    def later() -> Any:
        yield _analogy(1, 0)
        raise OSError("the embedding model is missing")

    jobs = [Job(seed=Seed.create("s", "math", f"q{i}", "r"), scenario="debate") for i in range(50)]
    emitted: list[int] = []
    try:
        stream(jobs, programs, cfg, lambda i, _: emitted.append(i), later=Later(later()))  # type: ignore[arg-type]
    except OSError as exc:
        assert "model is missing" in str(exc)
    else:
        raise AssertionError("the failure was not raised")
    assert len(emitted) < 50  # stopped, not run to the end


class Down(Stub):
    """A scenario program whose endpoint is down: every dialogue fails."""

    async def aforward(self, question: str, reference: str, **knobs: Any) -> dspy.Prediction:
        self.started.append(question)
        raise ConnectionError("the endpoint refused the connection")


def test_a_tripped_breaker_stops_the_partner_search_and_its_seeds_are_not_started() -> None:
    """The search would go on for ever (a huge pool): once the breaker trips it is stopped at
    its next step, and the analogy seeds still waiting are reported not started, with the
    breaker's reason, instead of the run waiting for partners it would never use."""
    env = {"MASTER__RUN__CONCURRENCY": "1", "MASTER__RUN__BREAKER_FAILURES": "3"}
    cfg = load_config(None, environ=env)
    started: list[str] = []
    programs = {name: Down(started) for name in ("error_correction", "debate", "analogy")}
    waiting = [Seed.create("s", "math", f"a{i}", "r") for i in range(4)]
    search_closed = threading.Event()

    def search() -> Any:
        try:
            while True:  # a chunk of the pool embedded, and another, ...
                time.sleep(0.005)
                yield []
        finally:
            search_closed.set()

    later = Later(search(), {seed.id: seed for seed in waiting})
    jobs = [Job(seed=Seed.create("s", "math", f"q{i}", "r"), scenario="debate") for i in range(6)]
    outcomes: dict[int, Outcome] = {}
    done = threading.Thread(target=stream, args=(jobs, programs, cfg, outcomes.__setitem__),
                            kwargs={"later": later}, daemon=True)  # fmt: skip
    done.start()
    done.join(20)
    assert not done.is_alive(), "the run waited for the partner search"
    assert search_closed.is_set() and later.unplanned == {}
    stages = {o.job.seed.question: o.reject.stage for o in outcomes.values() if o.reject}
    assert sorted(started) == ["q0", "q1", "q2"]  # three failures trip it; no more starts
    assert [stages[f"q{i}"] for i in range(6)] == ["simulate"] * 3 + ["breaker"] * 3
    assert [stages[f"a{i}"] for i in range(4)] == ["breaker"] * 4
    reasons = {o.reject.reason for o in outcomes.values() if o.reject.stage == "breaker"}  # type: ignore[union-attr]
    assert len(reasons) == 1 and "3 dialogues failed in a row" in reasons.pop()
