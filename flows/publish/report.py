"""report.md: what a person reads after a run: counts, LM use, and one sample per scenario."""

from __future__ import annotations

from typing import Any

from flows.core.config import SCENARIOS
from modules.lm.settings import NOTICE


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _quality(quality: dict[str, Any]) -> str:
    head = (
        f"Accepted {quality['accepted']}, dropped by the quality filter {quality['rejected']}, "
        f"failed to generate {quality.get('failed', 0)}, kept with a soft-check flag "
        f"{quality.get('flagged', 0)}, left unjudged (the judge's reply never parsed) "
        f"{quality.get('unjudged', 0)}."
    )
    audit = quality.get("audit") or {}
    if audit.get("judged"):
        head += (
            f" The judge found procedural errors in {audit['procedural_errors']} of the "
            f"{audit['judged']} accepted dialogues it judged ({audit['share']:.1%}; the "
            "paper's verifier: 4.1%)."
        )
    rates = quality.get("pass_rates", {})
    if not rates:
        return head
    table = markdown_table(
        ["check", "pass rate", "dropped for it"],
        [[c, f"{r:.1%}", quality["by_check"].get(c, 0)] for c, r in rates.items()],
    )
    return f"{head}\n\n## Quality checks\n\n{table}"


#: summary.json's per-role LM figures, as report.md's columns (after the role).
_LM_COLUMNS = {
    "calls": "calls",
    "cache_hits": "cache hits",
    "tokens_in": "tokens in",
    "tokens_out": "tokens out",
    "cost_usd": "cost (USD)",
    "format_repairs": "replies repaired",
    "format_failures": "replies unparsed",
}


def _replicas(lm: dict[str, Any]) -> list[str]:
    """The replicas table: each role's servers, what they were sent and how they fared."""
    rows = [
        [role, f"`{base}`", r["calls"], r["failures"], r["ejections"],
         "-" if r["p50_latency_s"] is None else f"{r['p50_latency_s']:.3f}"]
        for role, v in lm["by_role"].items()
        for base, r in v.get("replicas", {}).items()
    ]  # fmt: skip
    if not rows:
        return []
    header = ["role", "replica", "calls", "failures", "ejections", "p50 latency (s)"]
    return ["### Replicas", "", markdown_table(header, rows), ""]


def _release(summary: dict[str, Any]) -> list[str]:
    """The version, its gates and what changed since the previous one (flows/publish)."""
    if "gates" not in summary:
        return []
    from flows.publish.changes import changes_markdown

    gates = summary["gates"]
    verdict = (
        "passed" if gates["passed"] else "failed, published anyway (--force)"
        if gates["forced"] else "failed: not published"
    )  # fmt: skip
    rows = [
        [name, c["value"], c["limit"], "ok" if c["ok"] else "**failed**"]
        for name, c in gates["checked"].items()
    ]
    return [
        f"## Version {summary['version']}",
        "",
        f"Previous version: {summary.get('previous_version') or 'none'}. Publish gates "
        f"{verdict}." + "".join(f"\n- {reason}" for reason in gates["failed"]),
        "",
        markdown_table(["gate", "value", "limit", "result"], rows),
        "",
        changes_markdown(summary["changes"]),
        "",
    ]


def render_report(
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    embedded: bool,
    out_dir: str,
    plots: str = "",
) -> str:
    seeds, lm = summary["seeds"], summary["lm"]
    parts = ["# MASTER run report", ""]
    if embedded:
        parts += [f"> **Note.** {NOTICE}", ""]
    parts += [
        f"Output folder: `{out_dir}` · elapsed {summary['elapsed_s']:.1f} s · "
        f"config hash `{summary.get('config_hash', '')}`",
        "",
        "## Seeds",
        "",
        markdown_table(list(seeds), [list(seeds.values())]),
        "",
        "## Dialogues",
        "",
        markdown_table(
            ["scenario", "dialogues"], [[s, summary["dialogues"][s]] for s in SCENARIOS]
        ),
        "",
        *_release(summary),
        _quality(summary["quality"]),
        "",
        "## LM calls",
        "",
        markdown_table(
            ["role", *_LM_COLUMNS.values()],
            [[r, *(v.get(k, 0) for k in _LM_COLUMNS)] for r, v in lm["by_role"].items()]
            + [["**all**", *(lm.get(k, 0) for k in _LM_COLUMNS)]],
        ),
        "",
        *_replicas(lm),
    ]
    if plots:
        parts += ["## Plots", "", plots, ""]
    parts += ["## One dialogue per scenario", ""]
    for scenario in SCENARIOS:
        sample = next((r for r in rows if r["scenario"] == scenario), None)
        if sample is None:
            continue
        parts += [f"### {scenario} (seed `{sample['seed_id']}`, {sample['source']})", ""]
        for turn in sample["turns"]:
            who = turn["speaker"] + (
                f" · {turn['model']} T={turn['temperature']}" if turn["model"] else ""
            )
            text = turn["text"].replace("\n", "\n> ")
            parts += [f"**{who}**", "", f"> {text}", ""]
    return "\n".join(parts) + "\n"
