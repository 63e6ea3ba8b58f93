"""Merge: accepted dialogues (and, in `mix` mode, original seeds) into the published rows.

`replace` is the paper's BOOST-QA: each accepted dialogue stands in for its seed, one per seed.
`mix` adds original question/answer pairs at a configured ratio, for trainers who want both.
The order is a hash of each row's identity, so it is deterministic, independent of how
shards finished, and mixes scenarios and sources instead of grouping them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flows.core.config import MergeConfig, Scenario
from flows.core.records import Seed
from flows.planning.assign import replaced_by_original
from flows.publish.spill import RowRef, read_rows


def _order_key(row: dict[str, Any]) -> str:
    return hashlib.sha256(f"{row['seed_id']}\x1f{row['scenario']}".encode()).hexdigest()


def _content_digest(row: dict[str, Any]) -> str:
    canon = json.dumps(row["conversations"], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


def original_row(seed: Seed, why: str = "mix") -> dict[str, Any]:
    """A seed as a two-turn conversation, with the same columns as a dialogue row. `why` it
    is published as it came (provenance.original): mix, replaced (merge.replace_with_original)
    or backfill (merge.backfill: original)."""
    conversations = [
        {"from": "human", "value": seed.question},
        {"from": "gpt", "value": seed.reference},
    ]
    return {
        "seed_id": seed.id,
        "source": seed.source,
        "domain": seed.domain,
        "scenario": "original",
        "turns": [
            {
                "speaker": "question",
                "role": None,
                "text": seed.question,
                "model": None,
                "temperature": None,
                "finish_reason": None,
            },
            {
                "speaker": "strong_student",
                "role": None,
                "text": seed.reference,
                "model": None,
                "temperature": None,
                "finish_reason": None,
            },
        ],  # fmt: skip
        "conversations": conversations,
        "messages": [
            {"role": "user", "content": seed.question},
            {"role": "assistant", "content": seed.reference},
        ],
        "provenance": json.dumps({"original": why}),
        "quality": None,
        "question": seed.question,
        "reference": seed.reference,
        "similar_seed_id": None,
    }


def row_ref(row: dict[str, Any], where: Any) -> RowRef:
    """What merging needs of a row, with where its content is (see flows/publish/spill.py)."""
    return RowRef(_order_key(row), row["seed_id"], _content_digest(row), where)


def _unique(refs: Sequence[RowRef], seen: set[str]) -> list[RowRef]:
    kept = []
    for ref in refs:
        if ref.digest not in seen:
            seen.add(ref.digest)
            kept.append(ref)
    return kept


@dataclass(frozen=True)
class Original:
    """A seed published as it came, and why (see `original_row`)."""

    seed: Seed
    why: str


def standing_in(
    seeds: Sequence[Seed],
    dialogue_seed_ids: set[str],
    unfinished: set[str],
    cfg: MergeConfig,
    proportions: Mapping[Scenario, float],
) -> list[Original]:
    """The seeds published as their original question/answer instead of a dialogue, and why:
    `replaced` for a scenario in replace_with_original (the paper's ablations), `backfill`
    for a seed whose dialogue was not accepted when merge.backfill is `original` (a seed
    left unfinished by the budget or the breaker waits for the next run instead)."""
    replaced = set(cfg.replace_with_original)
    out: list[Original] = []
    for seed in seeds:
        if replaced_by_original(seed.id, proportions, replaced):
            out.append(Original(seed, "replaced"))
        elif (
            cfg.backfill == "original"
            and seed.id not in dialogue_seed_ids
            and seed.id not in unfinished
        ):
            out.append(Original(seed, "backfill"))
    return out


def merge_refs(
    dialogue_refs: Sequence[RowRef],
    seeds: Sequence[Seed],
    cfg: MergeConfig,
    originals: Sequence[Original] = (),
) -> tuple[list[RowRef], int]:
    """The published rows (as refs, in published order) and how many exact duplicates were
    dropped.

    One dialogue per seed (the first in the deterministic order, should a seed ever have
    two), then the `originals` standing in for seeds (see `standing_in`); `mix` then adds
    originals of other seeds in proportion to the dialogues."""
    seen_seeds: set[str] = set()
    one_each = []
    for ref in sorted(dialogue_refs, key=lambda r: r.order):
        if ref.seed_id not in seen_seeds:
            seen_seeds.add(ref.seed_id)
            one_each.append(ref)
    one_each += [
        row_ref(original_row(o.seed, o.why), o) for o in originals if o.seed.id not in seen_seeds
    ]
    one_each.sort(key=lambda r: r.order)
    standing = {o.seed.id for o in originals}
    seen: set[str] = set()
    refs = _unique(one_each, seen)
    dropped = len(one_each) - len(refs)
    if cfg.mode == "mix":
        wanted = min(len(seeds), round(cfg.originals_per_dialogue * len(refs)))
        by_hash = sorted(seeds, key=lambda s: hashlib.sha256(s.id.encode()).hexdigest())
        picked = [s for s in by_hash if s.id not in standing][:wanted]
        originals_ = [row_ref(original_row(s), Original(s, "mix")) for s in picked]
        extra = _unique(originals_, seen)
        dropped += len(originals_) - len(extra)
        refs = sorted([*refs, *extra], key=lambda r: r.order)
    return refs, dropped


def merge_rows(
    dialogue_rows: Sequence[dict[str, Any]], seeds: Sequence[Seed], cfg: MergeConfig
) -> tuple[list[dict[str, Any]], int]:
    """merge_refs over rows held in memory."""
    refs, dropped = merge_refs([row_ref(r, r) for r in dialogue_rows], seeds, cfg)
    return list(PublishedRows(refs)), dropped


class PublishedRows:
    """The published rows, read in order each time they are iterated: spilled rows from
    their files, originals made from their seed, rows held in memory as they are."""

    def __init__(self, refs: Sequence[RowRef]) -> None:
        self.refs = refs

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        spilled = read_rows(r.where for r in self.refs if isinstance(r.where, tuple))
        for ref in self.refs:
            if isinstance(ref.where, tuple):
                yield next(spilled)
            elif isinstance(ref.where, Original):
                yield original_row(ref.where.seed, ref.where.why)
            else:
                yield ref.where
