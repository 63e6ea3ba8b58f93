"""Scenario assignment: each seed to exactly one scenario, decided by its id alone.

Hashing the id (not shuffling the list) means adding seeds never reshuffles earlier ones, and
the same seed lands in the same scenario on every machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping

from flows.core.config import SCENARIOS, Scenario


def _unit(seed_id: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{seed_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_scenario(seed_id: str, proportions: Mapping[Scenario, float]) -> Scenario:
    weights = [(s, float(proportions.get(s, 0.0))) for s in SCENARIOS]
    total = sum(w for _, w in weights)
    point = _unit(seed_id, "scenario") * total
    acc = 0.0
    for scenario, weight in weights:
        acc += weight
        if weight > 0 and point < acc:
            return scenario
    return next(s for s, w in reversed(weights) if w > 0)


def replaced_by_original(
    seed_id: str, proportions: Mapping[Scenario, float], replaced: Collection[Scenario]
) -> bool:
    """Whether a seed is published as its original question/answer, not simulated: its
    scenario is one of `replaced` (merge.replace_with_original, the paper's ablations)."""
    return bool(replaced) and assign_scenario(seed_id, proportions) in replaced


def debate_rounds(seed_id: str, setting: int | str) -> int:
    """1 or 2 rounds: fixed by the config, or drawn from the seed id when 'auto'."""
    if setting in (1, 2):
        return int(setting)
    return 1 if _unit(seed_id, "rounds") < 0.5 else 2
