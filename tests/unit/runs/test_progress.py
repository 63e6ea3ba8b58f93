"""A run's progress: the figures of its one line (seeds done of the total, accepted and
rejected, LM calls, cache hits, tokens, cost where priced, ETA), a total that grows with each
round of seeds, a line at most every 10 s off a terminal and a live bar on one."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import pytest

from flows.commands.terminal import progress_line, showing
from flows.core.records import Reject
from flows.runs.progress import Figures, Progress, ProgressLines, duration
from modules.lm.call_cache import CallRecord


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def call(role: str, cached: bool = False, tokens_in: int = 100, tokens_out: int = 50) -> Any:
    return CallRecord(role, f"{role}-model", "k", cached, tokens_in, tokens_out, "stop")


def outcome(kind: str = "accepted", calls: list[Any] | None = None) -> Any:
    """An Outcome as far as progress reads one."""
    reject = dialogue = None
    if kind in ("failed", "budget"):
        reject = Reject(stage="simulate" if kind == "failed" else "budget", reason="why")
    else:
        dialogue = SimpleNamespace(quality={"accepted": kind == "accepted"})
    return SimpleNamespace(reject=reject, dialogue=dialogue, calls=calls or [])


def test_the_line_holds_every_figure_and_the_cost_only_when_priced() -> None:
    figures = Figures(
        done=120, total=200, accepted=110, rejected=8, calls=410, cache_hits=35,
        tokens=51_200, cost_usd=0.01234, eta_s=75,
    )  # fmt: skip
    assert figures.line() == (
        "seeds 120/200, accepted 110, rejected 8, 410 LM calls, 35 cache hits, "
        "51,200 tokens, $0.0123, eta 1m15s"
    )
    unpriced = Figures(done=3, total=4, accepted=1, rejected=2, calls=9, tokens=7, eta_s=0.4)
    assert unpriced.line() == (
        "seeds 3/4, accepted 1, rejected 2, 9 LM calls, 0 cache hits, 7 tokens, eta 0s"
    )
    assert "$" not in unpriced.line()
    assert Figures(total=5).line().endswith("eta ?")  # nothing done yet: no rate to go by
    some_lost = Figures(done=4, total=4, accepted=1, failed=2, unfinished=1).line()
    assert "accepted 1, rejected 0, failed 2, unfinished 1," in some_lost


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3600 * 2 + 7 * 60, "2h07m")]
)
def test_durations_read_at_a_glance(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_progress_counts_outcomes_and_calls_and_the_total_grows_with_each_round() -> None:
    clock = Clock()
    seen: list[Figures] = []
    progress = Progress(watch=lambda p: seen.append(p.figures()), clock=clock)
    progress.add(4)
    clock.now += 10
    progress.record(outcome("accepted", [call("weak"), call("strong", cached=True)]))
    progress.record(outcome("rejected", [call("peer", tokens_in=10, tokens_out=5)]))
    f = progress.figures()
    assert (f.done, f.total, f.accepted, f.rejected) == (2, 4, 1, 1)
    assert (f.calls, f.cache_hits, f.tokens) == (2, 1, 165)  # a cache hit costs no tokens
    assert f.cost_usd is None  # no prices: no cost
    assert f.eta_s == pytest.approx(10.0)  # 2 seeds in 10 s, 2 to go
    progress.add(6)  # a further round of seeds
    f = progress.figures()
    assert f.total == 10 and f.eta_s == pytest.approx(40.0)
    progress.record(outcome("failed"))
    progress.record(outcome("budget"))
    f = progress.figures()
    assert (f.done, f.failed, f.unfinished) == (4, 1, 1)
    assert [s.done for s in seen] == [0, 1, 2, 2, 3, 4]  # the watcher saw every change


def test_cost_is_priced_per_role_from_the_calls_made() -> None:
    progress = Progress(prices={"strong": (2.0, 10.0)})  # USD per million tokens
    progress.add(1)
    progress.record(
        outcome(
            "accepted",
            [
                call("strong", tokens_in=1_000, tokens_out=500),  # $0.002 + $0.005
                call("strong", cached=True),  # a hit is free
                call("weak", tokens_in=1_000_000),  # an unpriced role costs nothing
            ],
        )
    )
    assert progress.figures().cost_usd == pytest.approx(0.007)
    assert "$0.0070" in progress.line()


def test_off_a_terminal_a_line_at_most_every_ten_seconds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = Clock()
    lines = ProgressLines(progress_line, clock=clock)
    progress = Progress(watch=lines, clock=clock)
    progress.add(100)
    for _ in range(100):  # a seed every 0.25 s: 25 s in all
        clock.now += 0.25
        progress.record(outcome())
    written = capsys.readouterr()
    assert written.out == ""
    assert [line.split(" ", 1)[1].split(",")[0] for line in written.err.splitlines()] == [
        "seeds 40/100",
        "seeds 80/100",
    ]


def test_showing_off_a_terminal_ends_with_a_line_and_is_silent_without_seeds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with showing(Progress(), terminal=False):
        pass  # a replayed run: nothing simulated
    assert capsys.readouterr().err == ""
    progress = Progress()
    with showing(progress, terminal=False):
        progress.add(2)
        progress.record(outcome())
        progress.record(outcome("rejected"))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "seeds 2/2, accepted 1, rejected 1," in err[0]


def test_on_a_terminal_one_live_bar_shows_the_figures() -> None:
    from rich.console import Console

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200, color_system=None)
    progress = Progress(prices={"judge": (2.0, 2.0)})
    with showing(progress, terminal=True, console=console):
        progress.add(3)
        for _ in range(3):
            progress.record(outcome("accepted", [call("judge")]))
    drawn = screen.getvalue()
    assert "━" in drawn  # the bar
    last = drawn.split("\x1b[2K")[-1]  # the bar as it stays on screen (rich erases the others)
    assert "seeds 3/3, accepted 3, rejected 0, 3 LM calls, 0 cache hits, 450 tokens" in last
    assert "$0.0009" in last  # 450 tokens at $2 per million


def test_a_long_step_shows_alone_before_the_seeds_and_beside_them_after() -> None:
    progress = Progress(clock=Clock())
    assert progress.figures().steps == ()
    progress.step("reading gsm8k", 10_000)  # no known total: the count alone
    assert progress.line() == "reading gsm8k 10,000"
    progress.step("reading gsm8k", 30_000, 30_000)  # at its total: over
    progress.step("embedding the pool", 512, 20_000)
    assert progress.line() == "embedding the pool 512/20,000"
    progress.add(4)
    progress.record(outcome())
    line = progress.line()
    assert line.startswith("seeds 1/4, accepted 1,") and line.endswith(
        "; embedding the pool 512/20,000"
    )
    progress.step("embedding the pool", 20_000, 20_000)
    progress.step("matching partners", 512, 9_000)
    assert progress.line().endswith(", eta 0s; matching partners 512/9,000")
    progress.step("matching partners", 9_000, 9_000)
    assert ";" not in progress.line()


def test_off_a_terminal_a_step_alone_writes_a_line_at_most_every_ten_seconds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = Clock()
    progress = Progress(watch=ProgressLines(progress_line, clock=clock), clock=clock)
    for done in range(0, 20_000, 500):  # a chunk every 1 s: 40 s of embedding
        clock.now += 1
        progress.step("embedding the pool", done, 20_000)
    clock.now += 10
    progress.step("embedding the pool", 20_000, 20_000)  # over, and no seed yet: no line
    lines = [line.split(" ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert lines == [
        "embedding the pool 5,000/20,000",
        "embedding the pool 10,000/20,000",
        "embedding the pool 15,000/20,000",
    ]


def test_on_a_terminal_the_bar_follows_the_step_before_any_seed() -> None:
    from rich.console import Console

    from flows.commands.terminal import ProgressBar

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200, color_system=None)
    progress = Progress()
    console.print(ProgressBar(progress))
    assert "loading and planning" in screen.getvalue()
    progress.step("matching partners", 3, 4)
    console.print(ProgressBar(progress))
    drawn = screen.getvalue().splitlines()[-1]
    assert "matching partners 3/4" in drawn and "━" in drawn


def test_the_flows_stages_log_their_long_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The augment flow's load and plan tasks: their steps as lines in the run's logs."""
    import flows.augment

    monkeypatch.setattr(flows.augment, "PROGRESS_EVERY_S", 0.0)  # every step, for the test
    logged: list[str] = []
    monkeypatch.setattr(
        flows.augment, "log", SimpleNamespace(info=lambda f, *a: logged.append(f % a))
    )
    progress = flows.augment.step_lines()
    progress.step("embedding the pool", 0, 1000)  # the clock starts
    progress.step("embedding the pool", 512, 1000)
    assert logged == ["embedding the pool 512/1,000"]


def test_seeds_waiting_for_analogy_partners_are_shown_and_counted_in_the_eta() -> None:
    """The ready seeds all done while the partner search goes on is not 'eta 0s'."""
    clock = Clock()
    progress = Progress(clock=clock)
    progress.add(4, waiting=6)
    clock.now += 10
    for _ in range(4):
        progress.record(outcome())
    figures = progress.figures()
    assert figures.eta_s == pytest.approx(15.0)  # 2.5 s a seed, 6 to come
    assert figures.line().startswith("seeds 4/4 (+6 waiting for partners), accepted 4,")
    progress.add(5, waiting=0)  # a batch found, one seed left without a partner
    assert progress.figures().line().startswith("seeds 4/9, accepted 4,")
    progress.add(1)  # a further round: the waiting count is left as it is
    assert progress.figures().total == 10 and progress.figures().waiting == 0
