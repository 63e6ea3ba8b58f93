"""What publishing needs from a run's outcomes, gathered as each dialogue finishes.

Invariant: a run's memory does not grow with its finished dialogues (benchmarks: growth).
`Collected.add` takes an outcome as soon as it is final, keeps counts and the small rejects,
appends an accepted row to the spill (flows/publish/spill.py) and lets the outcome go.

A Collected is picklable (its spill file is closed and named), so a shard run elsewhere (a
Dask worker) returns its own and the flow merges them (`merge`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from flows.core.records import Dialogue, Reject, Seed
from flows.planning.jobs import ROLES_BY_SCENARIO
from flows.publish.accounting import CallTally
from flows.publish.merge import row_ref
from flows.publish.spill import RowRef, RowSpill
from flows.quality.checks import PROCEDURAL_ERRORS, PassTally, judge_said
from flows.quality.verification import quality_reject
from flows.simulation.simulate import Outcome, settled
from modules.scenarios.judge import UNJUDGED


def dataset_row(dialogue: Dialogue, seed: Seed | None) -> dict[str, Any]:
    """A dialogue as a published row: its fields, its seed's question and reference, and the
    provenance as a JSON string (its keys vary with the scenario and the roles it used)."""
    row = dialogue.model_dump(mode="json", by_alias=True)
    row["question"] = seed.question if seed else None
    row["reference"] = seed.reference if seed else None
    row["similar_seed_id"] = dialogue.provenance.get("similar_seed_id")  # analogy's partner
    row["provenance"] = json.dumps(row["provenance"], sort_keys=True)
    return row


#: Reject stages that are work left for the next run, not failures.
UNFINISHED = ("budget", "breaker")


class Collected:
    def __init__(self, spill_path: Path) -> None:
        self.spill = RowSpill(spill_path)
        self.refs: list[RowRef] = []
        self.failed: list[Reject] = []  # simulation failures
        self.stopped: list[Reject] = []  # unfinished: budget spent, breaker tripped
        self.dropped: list[Reject] = []  # dialogues the quality filter rejected
        self.accepted: Counter[str] = Counter()  # accepted dialogues per scenario
        self.flagged = 0  # accepted with a soft check failed
        self.unjudged = 0  # the judge's reply never parsed
        # the audit (the paper's verifier found 4.1% with procedural errors): accepted
        # dialogues the judge gave a verdict on, and those it said have procedural errors
        self.judged = 0
        self.procedural_errors = 0
        self.checks = PassTally()
        self.turn_flags: Counter[str] = Counter()
        self.versions: dict[str, str] = {}  # scenario -> program version
        self.calls = CallTally()
        self.scenarios: set[str] = set()
        self.outcomes = 0
        self.settled = True  # nothing left to retry (see flows/simulation/simulate.settled)

    def add(self, outcome: Outcome) -> None:
        """Take one final outcome (verified, budget stops marked); keep only its traces."""
        self.outcomes += 1
        self.calls.add(outcome.calls)
        self.scenarios.add(outcome.job.scenario)
        self.settled = self.settled and settled([outcome])
        if outcome.reject is not None:
            unfinished = outcome.reject.stage in UNFINISHED
            (self.stopped if unfinished else self.failed).append(outcome.reject)
        d = outcome.dialogue
        if d is None:
            return
        self.versions[d.scenario] = d.provenance["program_version"]
        self.turn_flags.update(f.split(":", 1)[1].split(":")[0] for f in d.quality["turn_flags"])
        checks = d.quality.get("checks")
        if checks is not None:
            self.checks.add(checks)
            judged = checks.get("judge") or {}
            self.unjudged += str(judged.get("reason", "")).startswith(UNJUDGED)
        if not d.quality.get("accepted", True):
            self.dropped.append(quality_reject(d))
            return
        self.accepted[d.scenario] += 1
        if any(v["ok"] is False for v in (checks or {}).values()):
            self.flagged += 1
        said = judge_said((checks or {}).get("judge"))
        self.judged += said is not None
        self.procedural_errors += said == PROCEDURAL_ERRORS
        row = dataset_row(d, outcome.job.seed)
        self.refs.append(row_ref(row, self.spill.add(row)))

    def merge(self, other: Collected) -> None:
        """Add a worker's Collected (its rows stay in its own spill file)."""
        self.refs.extend(other.refs)
        self.failed.extend(other.failed)
        self.stopped.extend(other.stopped)
        self.dropped.extend(other.dropped)
        self.accepted.update(other.accepted)
        self.flagged += other.flagged
        self.unjudged += other.unjudged
        self.judged += other.judged
        self.procedural_errors += other.procedural_errors
        self.checks.merge(other.checks)
        self.turn_flags.update(other.turn_flags)
        self.versions.update(other.versions)
        self.calls.merge(other.calls)
        self.scenarios.update(other.scenarios)
        self.outcomes += other.outcomes
        self.settled = self.settled and other.settled

    def close(self) -> None:
        self.spill.close()

    def audit(self) -> dict[str, Any]:
        """summary.json's quality.audit: the judge's verdicts on the accepted dialogues."""
        share = round(self.procedural_errors / self.judged, 4) if self.judged else None
        return {
            "judged": self.judged,
            "procedural_errors": self.procedural_errors,
            "share": share,
        }

    def roles(self) -> set[str]:
        return {r for s in self.scenarios for r in ROLES_BY_SCENARIO[s]}


def in_order(rejects: list[Reject]) -> list[Reject]:
    """Rejects in an order independent of which dialogue finished first (or in which worker)."""
    return sorted(rejects, key=lambda r: (r.seed_id or "", r.stage, r.reason))
