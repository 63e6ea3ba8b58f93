"""Report plots and the length/mix statistics behind them, on small synthetic rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows.publish.plots import plots_markdown, write_plots
from flows.quality.lengths import approx_tokens, counts_by, dialogue_lengths, length_stats

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PASS_RATES = {"fidelity": 0.8, "structure": 1.0, "judge": 0.5, "intent": 0.9}
NAMES = ["plot_counts.png", "plot_lengths.png", "plot_checks.png"]


def _row(scenario: str, source: str, n_turns: int, text: str) -> dict[str, Any]:
    turns = [{"speaker": f"s{i}", "text": f"{text} {i}"} for i in range(n_turns)]
    roles = ["user", "assistant"]
    return {
        "scenario": scenario,
        "source": source,
        "domain": "math",
        "turns": turns,
        "messages": [{"role": roles[i % 2], "content": t["text"]} for i, t in enumerate(turns)],
    }


def _rows() -> list[dict[str, Any]]:
    """Ten dialogues over two sources and all three scenarios, with varied lengths."""
    spec = [
        ("error_correction", "gsm8k", 4),
        ("error_correction", "gsm8k", 5),
        ("error_correction", "mmlu", 4),
        ("debate", "gsm8k", 6),
        ("debate", "gsm8k", 6),
        ("debate", "mmlu", 7),
        ("debate", "mmlu", 6),
        ("analogy", "gsm8k", 3),
        ("analogy", "mmlu", 3),
        ("analogy", "mmlu", 4),
    ]
    return [
        _row(sc, src, n, "Why is 12 + 7 = 19? " * (k + 1)) for k, (sc, src, n) in enumerate(spec)
    ]


def test_approx_tokens_rule() -> None:
    assert approx_tokens("") == 0
    assert approx_tokens("Hello, world!") == 4
    assert approx_tokens("It's 1234567.") == 7  # It ' s 123 456 7 .
    assert approx_tokens("snake_case  x") == 4  # snake _ case x
    assert approx_tokens("café über") == 2


def test_dialogue_lengths_counts_turns_and_message_tokens() -> None:
    row = {
        "turns": [{"speaker": "a", "text": "ignored here"}] * 3,
        "messages": [
            {"role": "user", "content": "One two."},
            {"role": "assistant", "content": "3"},
        ],
    }
    assert dialogue_lengths(row) == {"turns": 3, "tokens": 4}


def test_length_stats_exact() -> None:
    # turns 1, 2, 3, 4; tokens 1, 2, 3, 10 (one word per token, one message per turn).
    rows = [
        {"turns": [{}] * n, "messages": [{"role": "user", "content": " ".join(["w"] * t)}]}
        for n, t in [(1, 1), (2, 2), (3, 3), (4, 10)]
    ]
    stats = length_stats(rows)
    assert stats["turns"] == {
        "count": 4.0,
        "min": 1.0,
        "p50": 2.5,
        "p90": pytest.approx(3.7),
        "max": 4.0,
        "mean": 2.5,
    }
    assert stats["tokens"] == {
        "count": 4.0,
        "min": 1.0,
        "p50": 2.5,
        "p90": pytest.approx(7.9),
        "max": 10.0,
        "mean": 4.0,
    }


def test_length_stats_empty_is_zeros() -> None:
    zeros = dict.fromkeys(["count", "min", "p50", "p90", "max", "mean"], 0.0)
    assert length_stats([]) == {"turns": zeros, "tokens": zeros}


def test_counts_by_full_sorted_table() -> None:
    table = counts_by(_rows(), "scenario", "source")
    assert table == {
        "analogy": {"gsm8k": 1, "mmlu": 2},
        "debate": {"gsm8k": 2, "mmlu": 2},
        "error_correction": {"gsm8k": 2, "mmlu": 1},
    }
    assert list(table) == sorted(table)
    assert all(list(inner) == sorted(inner) for inner in table.values())
    # A pair that never occurs is 0, not missing; a null value counts as "unknown".
    sparse = [{"scenario": "debate", "source": "a"}, {"scenario": "analogy", "source": None}]
    assert counts_by(sparse, "scenario", "source") == {
        "analogy": {"a": 0, "unknown": 1},
        "debate": {"a": 1, "unknown": 0},
    }
    assert counts_by([], "scenario", "source") == {}


def _check_pngs(paths: list[Path], out: Path) -> None:
    assert paths == [out / n for n in NAMES]
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG_SIGNATURE), p
        assert len(data) > 2048, p
    assert sorted(q.name for q in out.iterdir()) == sorted(NAMES)  # no temporaries left


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Plots of the synthetic rows, written once: rendering dominates this file's run time."""
    out = tmp_path_factory.mktemp("plots")
    return write_plots(out, _rows(), PASS_RATES)


def test_write_plots_files(written: list[Path]) -> None:
    _check_pngs(written, written[0].parent)


def test_write_plots_reproducible(written: list[Path]) -> None:
    before = [p.read_bytes() for p in written]
    again = write_plots(written[0].parent, _rows(), PASS_RATES)
    assert again == written
    assert [p.read_bytes() for p in again] == before
    _check_pngs(again, written[0].parent)


def test_write_plots_empty_inputs(tmp_path: Path, written: list[Path]) -> None:
    paths = write_plots(tmp_path, [], {})
    _check_pngs(paths, tmp_path)
    assert [p.read_bytes() for p in paths] != [p.read_bytes() for p in written]


def test_plots_markdown_links_are_relative(tmp_path: Path) -> None:
    md = plots_markdown([tmp_path / n for n in NAMES])
    assert md.splitlines()[::2] == [
        "![Dialogues per scenario and source](plot_counts.png)",
        "![Dialogue lengths](plot_lengths.png)",
        "![Quality check pass rates](plot_checks.png)",
    ]
    assert str(tmp_path) not in md
    assert plots_markdown([]) == ""


def _inside(fig: Any) -> bool:
    """Whether everything drawn on `fig` (titles, labels, the tick labels shown, legends)
    lies within it: matplotlib's own tight bounding box of the drawing, in inches."""
    fig.canvas.draw()
    box = fig.get_tightbbox(fig.canvas.get_renderer())
    width, height = fig.get_size_inches()
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height


def test_no_label_of_any_plot_is_cut_off_even_with_long_check_and_source_names() -> None:
    """The margins are fixed, not laid out by matplotlib: the widest check name is measured."""
    from flows.publish.plots import _checks_figure, _counts_figure, _lengths_figure

    rows = _rows() + [_row("analogy", "a_source_with_a_rather_long_name", 4, "x " * 4000)]
    rates = {**PASS_RATES, "answer_matches_the_reference_answer_exactly": 0.25}
    for fig in (_counts_figure(rows), _lengths_figure(rows), _checks_figure(rates)):
        assert _inside(fig)
    # 100,000 dialogues of one scenario: the widest count on the y axis still fits
    many = [_row("debate", "gsm8k", 3, "q")] * 100_000
    assert _inside(_counts_figure(many))
