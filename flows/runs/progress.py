"""A run's progress: seeds done of the total, dialogues accepted and rejected, LM calls, cache
hits, tokens, cost where priced, and the time left.

The run feeds it (flows/runs/shards.py: `add` a round's seeds, `record` each final outcome);
whoever watches decides how to show it: the CLI draws a live bar on a terminal and writes a
line at most every 10 s otherwise. The total may grow while the run goes on (a further round
of seeds). The figures are those of finished dialogues, counted as summary.json's `lm` block
counts them (flows/publish/accounting.py), so the last line agrees with the summary.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flows.core.config import MasterConfig
from flows.planning.jobs import roles_in_use
from flows.publish.accounting import CallTally

if TYPE_CHECKING:
    from flows.simulation.simulate import Outcome

#: role -> (USD per million input tokens, USD per million output tokens)
Prices = Mapping[str, tuple[float, float]]


def run_prices(cfg: MasterConfig) -> dict[str, tuple[float, float]]:
    """The prices of the roles this run uses, for those that have one (none: no cost shown)."""
    prices = {}
    for role in roles_in_use(cfg):
        s = cfg.lms.for_role(role)
        if s.price_in_per_mtok or s.price_out_per_mtok:
            prices[role] = (s.price_in_per_mtok or 0.0, s.price_out_per_mtok or 0.0)
    return prices


def duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass(frozen=True)
class Figures:
    """One moment of a run's progress."""

    done: int = 0
    total: int = 0
    accepted: int = 0
    rejected: int = 0  # dropped by the quality filter
    failed: int = 0  # simulation failed (an endpoint down, a reply never parsed)
    unfinished: int = 0  # the budget or the circuit breaker stopped it: the next run ends it
    calls: int = 0  # LM calls made (not cache hits)
    cache_hits: int = 0
    tokens: int = 0  # input and output tokens of the calls made
    cost_usd: float | None = None  # None: no role of the run has a price
    eta_s: float | None = None  # None until a seed is done
    steps: tuple[tuple[str, int, int], ...] = ()  # long steps under way: name, done, total
    waiting: int = 0  # analogy seeds whose partner is still being looked for (not in total)

    def step_text(self) -> str:
        """The steps under way, e.g. `embedding the pool 4,096/20,000; reading rows 30,000`
        (a step with no known total shows its count alone)."""
        return "; ".join(
            f"{name} {done:,}/{total:,}" if total else f"{name} {done:,}"
            for name, done, total in self.steps
        )

    def line(self) -> str:
        """The figures in one line, e.g. `seeds 120/200, accepted 110, rejected 8, 410 LM
        calls, 35 cache hits, 51,200 tokens, $0.0123, eta 12s`. Failed and unfinished
        dialogues appear once there are some; the steps under way (step_text) at the end,
        alone before any seed is simulated."""
        if not self.total and self.steps:
            return self.step_text()
        seeds = f"seeds {self.done}/{self.total}"
        if self.waiting:
            seeds += f" (+{self.waiting:,} waiting for partners)"
        parts = [seeds, f"accepted {self.accepted}"]
        parts.append(f"rejected {self.rejected}")
        if self.failed:
            parts.append(f"failed {self.failed}")
        if self.unfinished:
            parts.append(f"unfinished {self.unfinished}")
        parts += [
            f"{self.calls} LM calls",
            f"{self.cache_hits} cache hits",
            f"{self.tokens:,} tokens",
        ]
        if self.cost_usd is not None:
            parts.append(f"${self.cost_usd:.4f}")
        parts.append("eta " + ("?" if self.eta_s is None else duration(self.eta_s)))
        line = ", ".join(parts)
        return f"{line}; {self.step_text()}" if self.steps else line


class Progress:
    """A run's progress, fed by the run and read by a watcher (called after every change)."""

    def __init__(
        self,
        prices: Prices | None = None,
        watch: Callable[[Progress], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prices = dict(prices or {})
        self.watch = watch
        self.clock = clock
        self.calls = CallTally()
        self.total = 0
        self.done = 0
        self.counts = {"accepted": 0, "rejected": 0, "failed": 0, "unfinished": 0}
        self.started: float | None = None  # when the first seeds were added
        self.steps: dict[str, tuple[int, int]] = {}  # long steps under way, in start order
        self.waiting = 0
        self._lock = threading.Lock()

    def step(self, name: str, done: int, total: int = 0) -> None:
        """How far a long step has got (loading, dedupe, decontamination, embedding, partner
        matching, publishing); called from any thread. A step is over at its total (a step
        with no known total, 0, ends with done == total == its count)."""
        with self._lock:
            if total and done >= total:
                self.steps.pop(name, None)
            else:
                self.steps[name] = (done, total)
        self._changed()

    def add(self, seeds: int, waiting: int | None = None) -> None:
        """More seeds to simulate (the run's first round, a batch of analogy jobs, a further
        round); `waiting`, when given: the analogy seeds still waiting for a partner, which
        the ETA counts as to come."""
        with self._lock:
            self.total += seeds
            if waiting is not None:
                self.waiting = waiting
            if self.started is None:
                self.started = self.clock()
        self._changed()

    def record(self, outcome: Outcome) -> None:
        """One seed done: its outcome is final (verified, budget stops marked)."""
        with self._lock:
            self.done += 1
            self.counts[self.kind(outcome)] += 1
            self.calls.add(outcome.calls)
        self._changed()

    @staticmethod
    def kind(outcome: Outcome) -> str:
        """accepted, rejected (quality filter), failed or unfinished, as Collected counts."""
        if outcome.reject is not None:
            from flows.publish.collect import UNFINISHED  # loaded with the simulation

            return "unfinished" if outcome.reject.stage in UNFINISHED else "failed"
        if outcome.dialogue is not None and not outcome.dialogue.quality.get("accepted", True):
            return "rejected"
        return "accepted"

    def figures(self) -> Figures:
        with self._lock:
            rows = self.calls.by_role
            cost = None
            if self.prices:
                cost = sum(
                    (rows[role][2] * p_in + rows[role][3] * p_out) / 1e6
                    for role, (p_in, p_out) in self.prices.items()
                )
            eta = None
            if self.done and self.started is not None:
                elapsed = self.clock() - self.started
                eta = elapsed / self.done * max(self.total + self.waiting - self.done, 0)
            return Figures(
                done=self.done,
                total=self.total,
                **self.counts,
                calls=sum(r[0] for r in rows.values()),
                cache_hits=sum(r[1] for r in rows.values()),
                tokens=sum(r[2] + r[3] for r in rows.values()),
                cost_usd=cost,
                eta_s=eta,
                steps=tuple((name, d, t) for name, (d, t) in self.steps.items()),
                waiting=self.waiting,
            )

    def line(self) -> str:
        return self.figures().line()

    def _changed(self) -> None:
        if self.watch is not None:
            self.watch(self)


class ProgressLines:
    """A watcher that shows progress as lines: `write(progress)` at most every `every`
    seconds while seeds finish or steps move (the CLI off a terminal, the flow into its
    run's logs), and `write` once more at the end, by whoever holds it."""

    def __init__(
        self,
        write: Callable[[Progress], None],
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.write = write
        self.every = every
        self.clock = clock
        self.last: float | None = None

    def __call__(self, progress: Progress) -> None:
        now = self.clock()
        if self.last is None:  # the first change (seeds added, a step begun): the clock starts
            self.last = now
        elif now - self.last >= self.every and (progress.total or progress.steps):
            # (a step just over, before any seed: nothing to show)
            self.last = now
            self.write(progress)
