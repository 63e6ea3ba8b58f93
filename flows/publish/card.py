"""The dataset card (README.md in the output): what a person or the Hub needs to trust the data.

Provenance comes from the run itself (models and temperatures per role, program versions,
config hash, date), never from the environment: no key, path or host name reaches the card.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import yaml

from flows.core.config import MasterConfig
from flows.planning.jobs import ROLES_BY_SCENARIO
from flows.publish.paper_setup import NOT_GIVEN, differences
from flows.publish.report import markdown_table
from flows.quality.lengths import counts_by, length_stats


def _front_matter(cfg: MasterConfig, n_rows: int) -> str:
    size = (
        "n<1K" if n_rows < 1_000 else "1K<n<10K" if n_rows < 10_000 else
        "10K<n<100K" if n_rows < 100_000 else "100K<n<1M"
    )  # fmt: skip
    meta = {
        "language": ["en"],
        "license": "other",
        "task_categories": ["text-generation"],
        "tags": ["synthetic", "multi-agent", "MASTER", "sharegpt"],
        "size_categories": [size],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": "dataset.parquet"}],
            }
        ],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def render_card(
    cfg: MasterConfig,
    summary: Mapping[str, Any],
    rows: list[dict[str, Any]],
    versions: Mapping[str, str],
    plots: str = "",
    now: datetime | None = None,
) -> str:
    when = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    quality = summary["quality"]
    roles = sorted(
        {
            role
            for scenario, weight in cfg.scenarios.proportions.items()
            if weight > 0
            for role in ROLES_BY_SCENARIO[scenario]
        }
    )
    lm_rows = [
        [role, cfg.lms.for_role(role).model, cfg.lms.for_role(role).temperature,  # type: ignore[arg-type]
         cfg.lms.for_role(role).max_tokens]  # type: ignore[arg-type]
        for role in (*roles, *(["judge"] if cfg.quality.enabled and cfg.quality.judge else []))
    ]  # fmt: skip
    table = counts_by(rows, "scenario", "source")
    sources = sorted({s for by_source in table.values() for s in by_source})
    count_rows = [
        [scenario, *(by_source.get(s, 0) for s in sources), sum(by_source.values())]
        for scenario, by_source in table.items()
    ]
    stats = length_stats(rows)
    stat_keys = ["min", "p50", "p90", "max", "mean"]
    parts = [
        _front_matter(cfg, len(rows)),
        f"# {cfg.publish.name}",
        "",
        "Multi-agent classroom dialogues generated with MASTER (arXiv 2506.02689): weak students "
        "err and teachers correct them, peers debate and a strong student settles it, a teacher "
        "explains and a student solves the question and a retrieved similar one. Each row is one "
        "dialogue in ShareGPT (`conversations`) and OpenAI chat (`messages`) form, with its "
        "seed's question and reference, its turns, provenance and quality verdicts.",
        "",
        "## Files",
        "",
        "- `dataset.parquet`: every column; `dataset.jsonl`: ShareGPT; `messages.jsonl`: OpenAI "
        "chat, strictly alternating user/assistant",
        "- `hf/`: the same rows as a `datasets.load_from_disk` folder",
        "- `dataset_info.json`: a LLaMA-Factory entry for `dataset.jsonl`; "
        "`llamafactory_lora.yaml`: the paper's LoRA fine-tuning recipe on it",
        "- training weights: "
        + (
            "`messages.jsonl` gives the deliberately imperfect assistant turns (the weak "
            "student's first answer, debaters A and B) `weight` 0 and the others 1 "
            "(publish.flawed_turns: mask)"
            if cfg.publish.flawed_turns == "mask"
            else "every assistant turn is trained on, the deliberately imperfect ones too "
            "(publish.flawed_turns: train)"
        ),
        "- `rejects.parquet`: every dropped seed or dialogue, with its reason",
        "",
        "## Provenance",
        "",
        f"Generated {when}; config hash `{summary.get('config_hash', '')}`; merge mode "
        f"`{cfg.merge.mode}`.",
        "",
        markdown_table(["role", "model", "temperature", "max tokens"], lm_rows),
        "",
        markdown_table(
            ["scenario", "program version"], [[k, v] for k, v in sorted(versions.items())]
        ),
        "",
        "## Counts",
        "",
        markdown_table(["scenario", *sources, "total"], count_rows) if count_rows else "No rows.",
        "",
        f"Seeds: {summary['seeds'].get('kept', 0)} kept of {summary['seeds'].get('loaded', 0)} "
        f"loaded. Dialogues accepted: {quality['accepted']}; rejected: {quality['rejected']}.",
        "",
        "## Quality checks",
        "",
        "Pass rate = passed / checked; a check that does not apply to a dialogue is not counted. "
        f"Hard checks (a failure drops the dialogue): {', '.join(sorted(cfg.quality.hard))}.",
        "",
        markdown_table(
            ["check", "pass rate", "dialogues dropped for it"],
            [
                [name, f"{rate:.1%}", quality["by_check"].get(name, 0)]
                for name, rate in quality.get("pass_rates", {}).items()
            ],
        ),
        "",
        "## Lengths",
        "",
        markdown_table(
            ["per dialogue", *stat_keys],
            [[name, *(round(s.get(k, 0), 1) for k in stat_keys)] for name, s in stats.items()],
        ),
        "",
        "Tokens are estimated (words and punctuation), not counted with a model's tokenizer.",
        "",
    ]
    diffs = differences(cfg)
    parts += [
        "## Differences from the paper's setup",
        "",
        "Compared with BOOST-QA as the paper describes it (`master run --profile boostqa`):",
        "",
        *([f"- {d}" for d in diffs] or ["- none"]),
        "",
        "Left open by the paper, chosen here:",
        "",
        *(f"- {item}" for item in NOT_GIVEN),
        "",
    ]
    if plots:
        parts += ["## Plots", "", plots, ""]
    parts += [
        "## Licence",
        "",
        "The dialogues derive from the seed datasets listed above; their licences apply.",
        "",
    ]
    return "\n".join(parts)
