"""A job: one seed with everything its scenario needs, decided before any LM call."""

from __future__ import annotations

from dataclasses import dataclass

from flows.config import Scenario
from flows.records import Seed
from modules.settings import Role

ROLES_BY_SCENARIO: dict[str, tuple[Role, ...]] = {
    "error_correction": ("weak", "strong"),
    "debate": ("peer", "strong"),
    "analogy": ("strong",),
}


@dataclass(frozen=True)
class Job:
    seed: Seed
    scenario: Scenario
    rounds: int = 1
    similar: Seed | None = None

    @property
    def model_turns(self) -> int:
        """The model turns its scenario plays (a retried turn aside): a debate speaks twice a
        round and is then settled, the other scenarios speak three times."""
        return 2 * self.rounds + 1 if self.scenario == "debate" else 3
