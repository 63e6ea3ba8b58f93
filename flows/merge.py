"""Merge: accepted dialogues (and, in `mix` mode, original seeds) into the published rows.

`replace` is the paper's BOOST-QA: each accepted dialogue stands in for its seed, one per seed.
`mix` adds original question/answer pairs at a configured ratio, for trainers who want both.
The order is a hash of each row's identity, so it is deterministic, independent of how
shards finished, and mixes scenarios and sources instead of grouping them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from flows.config import MergeConfig
from flows.records import Seed


def _order_key(row: dict[str, Any]) -> str:
    return hashlib.sha256(f"{row['seed_id']}\x1f{row['scenario']}".encode()).hexdigest()


def _content_digest(row: dict[str, Any]) -> str:
    canon = json.dumps(row["conversations"], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


def original_row(seed: Seed) -> dict[str, Any]:
    """A seed as a two-turn conversation, with the same columns as a dialogue row."""
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
        "provenance": json.dumps({"original": True}),
        "quality": None,
        "question": seed.question,
        "reference": seed.reference,
    }


def _unique(rows: Sequence[dict[str, Any]], seen: set[str]) -> list[dict[str, Any]]:
    kept = []
    for row in rows:
        digest = _content_digest(row)
        if digest not in seen:
            seen.add(digest)
            kept.append(row)
    return kept


def merge_rows(
    dialogue_rows: Sequence[dict[str, Any]], seeds: Sequence[Seed], cfg: MergeConfig
) -> tuple[list[dict[str, Any]], int]:
    """The published rows and how many exact duplicates were dropped.

    One dialogue per seed (the first in the deterministic order, should a seed ever have
    two); `mix` then adds originals in proportion to the dialogues that remain."""
    seen_seeds: set[str] = set()
    one_each = []
    for row in sorted(dialogue_rows, key=_order_key):
        if row["seed_id"] not in seen_seeds:
            seen_seeds.add(row["seed_id"])
            one_each.append(row)
    seen: set[str] = set()
    rows = _unique(one_each, seen)
    dropped = len(one_each) - len(rows)
    if cfg.mode == "mix":
        wanted = min(len(seeds), round(cfg.originals_per_dialogue * len(rows)))
        picked = sorted(seeds, key=lambda s: hashlib.sha256(s.id.encode()).hexdigest())[:wanted]
        originals = [original_row(s) for s in picked]
        extra = _unique(originals, seen)
        dropped += len(originals) - len(extra)
        rows = sorted([*rows, *extra], key=_order_key)
    return rows, dropped
