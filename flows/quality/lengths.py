"""Dialogue sizes and mix for the run report and its plots, without loading any tokenizer.

Token counts here are estimates: a run can use several models with different tokenizers (or
none we can load offline), and the report only needs a stable sense of scale that is the same
on every machine and every rerun. Everything is pure, so the plots and the tests share it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

# One estimated token per: run of letters, group of up to three digits, or single other
# non-space character (punctuation, symbols, underscore). Common English words are one BPE
# token and GPT-style tokenizers split numbers into groups of three digits and most
# punctuation into its own token, so for English prose this lands within a fair margin of
# cl100k/o200k counts (it undercounts rare long words, which BPE splits further).
_TOKEN = re.compile(r"[^\W\d_]+|\d{1,3}|[^\w\s]|_")

LENGTH_METRICS = ("turns", "tokens")
STAT_NAMES = ("count", "min", "p50", "p90", "max", "mean")
MISSING = "unknown"


def approx_tokens(text: str) -> int:
    """Estimate the token count of text with the deterministic rule documented at _TOKEN."""
    return len(_TOKEN.findall(text)) if text else 0


def dialogue_lengths(row: Mapping[str, Any]) -> dict[str, int]:
    """Turns as generated, tokens as trained on.

    Turns come from `turns` (the dialogue as the agents spoke it); tokens come from `messages`,
    because that is the text a fine-tune actually sees after the layout mapping. A row's
    shape (`row_shape`) already holds both counts.
    """
    if isinstance(row.get("turns"), int):
        return {"turns": row["turns"], "tokens": row["tokens"]}
    messages = row.get("messages") or []
    return {
        "turns": len(row.get("turns") or []),
        "tokens": sum(approx_tokens(m.get("content") or "") for m in messages),
    }


def row_shape(row: Mapping[str, Any]) -> dict[str, Any]:
    """What the plots and the dataset card count of a row, without its text: a run keeps
    one per published row instead of the rows themselves."""
    return {"scenario": row.get("scenario"), "source": row.get("source"), **dialogue_lengths(row)}


def length_stats(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """count/min/p50/p90/max/mean of turns and tokens per dialogue.

    Percentiles interpolate linearly (numpy's default), so they can be checked by hand. An empty
    run gives zeros rather than None/NaN so the report and JSON summary need no special case.
    """
    import polars as pl  # loaded by the card and the plots only, not by a replay

    lengths = [dialogue_lengths(r) for r in rows]
    if not lengths:
        return {m: dict.fromkeys(STAT_NAMES, 0.0) for m in LENGTH_METRICS}
    frame = pl.DataFrame(lengths, schema={m: pl.Int64 for m in LENGTH_METRICS})
    stats = frame.select(
        pl.struct(
            count=pl.col(m).count(),
            min=pl.col(m).min(),
            p50=pl.col(m).quantile(0.5, interpolation="linear"),
            p90=pl.col(m).quantile(0.9, interpolation="linear"),
            max=pl.col(m).max(),
            mean=pl.col(m).mean(),
        ).alias(m)
        for m in LENGTH_METRICS
    ).row(0, named=True)
    return {m: {k: float(stats[m][k]) for k in STAT_NAMES} for m in LENGTH_METRICS}


def counts_by(
    rows: Iterable[Mapping[str, Any]], outer: str, inner: str
) -> dict[str, dict[str, int]]:
    """Rows per (outer, inner) pair as a full table: every inner key under every outer key.

    Absent pairs are 0 rather than missing, so a caller can draw grouped bars or a markdown
    table without filling gaps; keys are sorted so the output is identical across reruns.
    A missing or null value is counted under "unknown" instead of failing the report.
    """
    import polars as pl

    pairs = [{outer: _key(r.get(outer)), inner: _key(r.get(inner))} for r in rows]
    if not pairs:
        return {}
    grouped = (
        pl.DataFrame(pairs, schema={outer: pl.String, inner: pl.String})
        .group_by([outer, inner])
        .len(name="n")
    )
    inner_keys = sorted(set(grouped[inner].to_list()))
    table = {o: dict.fromkeys(inner_keys, 0) for o in sorted(set(grouped[outer].to_list()))}
    for o, i, n in grouped.iter_rows():
        table[o][i] = int(n)
    return table


def _key(value: Any) -> str:
    return MISSING if value is None else str(value)
