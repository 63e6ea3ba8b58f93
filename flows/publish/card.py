"""The dataset card (README.md in the output): what a person or the Hub needs to trust the data.

The card's YAML is huggingface_hub's DatasetCardData; its `configs` name the data files, and
those (with the images the card shows) are exactly what a Hub upload sends (`card_files`), so
`datasets.load_dataset(repo)` reads the rows the card describes. The body is a list of
sections (`card_sections`): a new one is one more entry.

Provenance comes from the run itself (models and temperatures per role, program versions,
config hash, date), never from the environment: no key, path or host name reaches the card.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData

from flows.core.config import MasterConfig
from flows.planning.jobs import ROLES_BY_SCENARIO
from flows.publish.changes import changes_markdown
from flows.publish.paper_setup import NOT_GIVEN, audit_sentence, differences
from flows.publish.report import markdown_table
from flows.publish.trainers import axolotl, llamafactory, trl
from flows.quality.lengths import counts_by, length_stats

#: the file of the card's `default` config (train split): the rows `load_dataset` reads
DATA_FILE = "dataset.parquet"
#: the columns of the card's `chat` config, read from DATA_FILE: `datasets` reads all of a
#: repo's configs with one builder, so the chat config cannot be messages.jsonl beside parquet
CHAT_COLUMNS = ["seed_id", "scenario", "messages"]
CHAT_FILE = "messages.jsonl"
CARD_FILE = "README.md"
ARXIV = "2506.02689"
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def card_data(cfg: MasterConfig, n_rows: int) -> DatasetCardData:
    """The card's YAML: licence, provenance, tags, size and the `configs` that point at the
    data (`default`: every column; `chat`: the messages)."""
    size = (
        "n<1K" if n_rows < 1_000 else "1K<n<10K" if n_rows < 10_000 else
        "10K<n<100K" if n_rows < 100_000 else "100K<n<1M"
    )  # fmt: skip
    publish = cfg.publish
    licence: dict[str, str] = {"license": publish.license}
    if publish.license == "other":
        licence |= {"license_name": publish.license_name, "license_link": publish.license_link}
    return DatasetCardData(
        pretty_name=publish.name,
        language=["en"],
        **licence,
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        source_datasets=seed_sources(cfg),
        task_categories=["text-generation"],
        tags=["synthetic", "multi-agent", "MASTER", "sharegpt", f"arxiv:{ARXIV}"],
        size_categories=[size],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": DATA_FILE}],
                "default": True,
            },
            {
                "config_name": "chat",
                "data_files": [{"split": "train", "path": DATA_FILE}],
                "columns": CHAT_COLUMNS,
            },
        ],
    )


def seed_sources(cfg: MasterConfig) -> list[str]:
    """The seed sources: a Hub dataset by its id, a local one by its name."""
    return list(dict.fromkeys(s.hf or s.label for s in cfg.seeds.sources))


def training_section(cfg: MasterConfig, training: Mapping[str, Any]) -> str:
    """What each trainer reads, how the deliberately imperfect turns stay out of its loss,
    the recipe's model and template, and the length audit."""
    if not training.get("files"):
        return "## Training\n\nNo rows: no trainer files were written."
    masking = cfg.publish.flawed_turns == "mask"
    lf, audit = training["llamafactory"], training["lengths"]
    weights = (
        "The deliberately imperfect assistant turns (the weak student's first answer, "
        "debaters A and B) are left out of the loss in every file below "
        "(publish.flawed_turns: mask); `messages` in `dataset.parquet` and `messages.jsonl` "
        "give each assistant message a `weight`, 0 for those turns and 1 for the others."
        if masking
        else "Every assistant turn is trained on, the deliberately imperfect ones too "
        "(publish.flawed_turns: train), as in the paper's ShareGPT data."
    )
    lf_rows = (
        "LLaMA-Factory has no per-message weight, so each row is a dialogue up to one trained "
        "assistant turn and the recipe sets `mask_history: true`, which trains the last turn "
        "of a row only (the turns before it are context)"
        if masking
        else "one row per dialogue, every assistant turn trained"
    )
    bullets = [
        f"- LLaMA-Factory: `{llamafactory.RECIPE_FILE}` trains on `{lf['file']}` "
        f"({lf['rows']} rows) through the `{lf['dataset']}` entry of "
        f"`{llamafactory.INFO_FILE}`: {lf_rows}.",
        f"- TRL: `{trl.FILE}` ({training['trl']['rows']} rows): conversational prompt/completion "
        "rows, one per trained assistant turn; `SFTTrainer` computes the loss on the "
        "completion only (`completion_only_loss`).",
        f"- OpenAI fine-tuning: `{CHAT_FILE}`, `messages` only"
        + (", with `weight` on each assistant message." if masking else "."),
        f"- axolotl: `{CHAT_FILE}` with this dataset entry"
        + (
            " (`message_field_training` makes axolotl read the weights; without it, it "
            "trains by role):"
            if masking
            else ":"
        )
        + f"\n\n```yaml\n{axolotl.config(masking)}```",
    ]
    recipe = (
        f"The recipe trains the base `{llamafactory.MODEL}` with LLaMA-Factory's "
        f"`{llamafactory.TEMPLATE}` template, the pairing LLaMA-Factory documents for base "
        "models (an instruct model takes its own template). The paper fine-tunes base models "
        "(LLaMA3-8B, Qwen2.5-7B, Mistral-7B) with LLaMA-Factory and does not name its "
        "template; its hyperparameters (appendix D.2) are the recipe's."
    )
    estimate = " (an estimate: the recipe model's tokenizer is not cached here)"
    cut = (
        f" ({audit['over_cutoff_rows']}; LLaMA-Factory cuts first: "
        + ", ".join(f"{k} in {v}" for k, v in audit["cut_first"].items())
        + f"; {audit['trained_tokens_cut']} of them lose trained tokens)"
    )
    lengths = (
        f"Lengths of `{lf['file']}`'s rows as the recipe encodes them, counted with "
        f"{audit['tokenizer']}{estimate if audit['estimate'] else ''}: median {audit['p50']}, "
        f"p90 {audit['p90']}, max {audit['max']} tokens; {audit['over_cutoff']} of "
        f"{audit['rows']} rows over cutoff_len {audit['cutoff_len']}"
        + (cut if audit["over_cutoff"] else "")
        + "."
    )
    return "\n\n".join(["## Training", weights, "\n".join(bullets), recipe, lengths])


def card_files(card: str) -> list[str]:
    """The files a card names, in its folder: the data files of its `configs`, then the
    images it shows. A Hub upload sends these and the card, nothing else."""
    data: list[str] = []
    for config in DatasetCard(card).data.to_dict().get("configs") or []:
        files = config.get("data_files") or []
        for entry in [files] if isinstance(files, str | dict) else files:
            paths = entry.get("path", []) if isinstance(entry, dict) else entry
            data += [paths] if isinstance(paths, str) else list(paths)
    images = [p for p in _IMAGE.findall(card) if "://" not in p]
    return list(dict.fromkeys([*data, *images]))


def card_sections(
    cfg: MasterConfig,
    summary: Mapping[str, Any],
    rows: list[dict[str, Any]],
    versions: Mapping[str, str],
    plots: str = "",
    now: datetime | None = None,
) -> list[str]:
    """The card's body, one markdown block per section, in order."""
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
    version = summary.get("version")
    sections = [
        f"# {cfg.publish.name}\n\n"
        "Multi-agent classroom dialogues generated with MASTER "
        f"([arXiv {ARXIV}](https://arxiv.org/abs/{ARXIV})): weak students "
        "err and teachers correct them, peers debate and a strong student settles it, a teacher "
        "explains and a student solves the question and a retrieved similar one. Each row is one "
        "dialogue in ShareGPT (`conversations`) and OpenAI chat (`messages`) form, with its "
        "seed's question and reference, its turns, provenance and quality verdicts.",
        "## Files\n\n"
        f"- `{DATA_FILE}`: every column, the `default` config's train split "
        '(`datasets.load_dataset("<repo>")`); its chat messages alone are the `chat` config '
        '(`datasets.load_dataset("<repo>", "chat")`); on the Hub, it and the plots below are '
        "the only files beside this card\n"
        "- in the run's output folder also: `dataset.jsonl` (ShareGPT), `messages.jsonl` (the "
        "same rows as OpenAI chat messages), `hf/` (the same rows "
        "as a `datasets.load_from_disk` folder), the trainers' files (below) and "
        "`rejects.parquet` (every dropped seed or dialogue, with its reason)",
        *([training_section(cfg, summary["training"])] if "training" in summary else []),
        "## Provenance\n\n"
        + (f"Version `{version}`. " if version else "")
        + f"Generated {when}; config hash `{summary.get('config_hash', '')}`; merge mode "
        f"`{cfg.merge.mode}`.\n\n"
        + markdown_table(["role", "model", "temperature", "max tokens"], lm_rows)
        + "\n\n"
        + markdown_table(
            ["scenario", "program version"], [[k, v] for k, v in sorted(versions.items())]
        ),
        "## Counts\n\n"
        + (
            markdown_table(["scenario", *sources, "total"], count_rows)
            if count_rows
            else "No rows."
        )
        + f"\n\nSeeds: {summary['seeds'].get('kept', 0)} kept of "
        f"{summary['seeds'].get('loaded', 0)} loaded. Dialogues accepted: "
        f"{quality['accepted']}; rejected: {quality['rejected']}.",
        *([changes_markdown(summary["changes"])] if summary.get("changes") else []),
        "## Quality checks\n\n"
        "Pass rate = passed / checked; a check that does not apply to a dialogue is not counted. "
        f"Hard checks (a failure drops the dialogue): {', '.join(sorted(cfg.quality.hard))}.\n\n"
        + markdown_table(
            ["check", "pass rate", "dialogues dropped for it"],
            [
                [name, f"{rate:.1%}", quality["by_check"].get(name, 0)]
                for name, rate in quality.get("pass_rates", {}).items()
            ],
        )
        + f"\n\n{audit_sentence(cfg, quality)}",
        "## Lengths\n\n"
        + markdown_table(
            ["per dialogue", *stat_keys],
            [[name, *(round(s.get(k, 0), 1) for k in stat_keys)] for name, s in stats.items()],
        )
        + "\n\nTokens are estimated (words and punctuation), not counted with a model's "
        "tokenizer.",
    ]
    sections.append(
        "## Differences from the paper's setup\n\n"
        "Every setting where this run departs from BOOST-QA as the paper describes it "
        "(`master run --profile boostqa` follows the paper), or where the paper gives no "
        "value:\n\n"
        + "\n".join(f"- {d}" for d in differences(cfg))
        + "\n\nAlso left open by the paper:\n\n"
        + "\n".join(f"- {item}" for item in NOT_GIVEN)
    )
    if plots:
        sections.append(f"## Plots\n\n{plots}")
    sections.append(
        "## Licence\n\nThe dialogues derive from these seed datasets, whose licences apply: "
        + ", ".join(f"`{s}`" for s in seed_sources(cfg))
        + "; and the terms of the models that wrote the turns (Provenance) apply to their text."
    )
    return sections


def render_card(
    cfg: MasterConfig,
    summary: Mapping[str, Any],
    rows: list[dict[str, Any]],
    versions: Mapping[str, str],
    plots: str = "",
    now: datetime | None = None,
) -> str:
    """README.md: the YAML of `card_data`, then the sections of `card_sections`."""
    body = "\n\n".join(card_sections(cfg, summary, rows, versions, plots, now))
    card = DatasetCard(f"---\n{card_data(cfg, len(rows)).to_yaml()}\n---\n\n{body}\n")
    return str(card)
