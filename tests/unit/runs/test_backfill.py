"""What resimulate backfill counts as a source's rows before it samples more seeds."""

from __future__ import annotations

from pathlib import Path

from flows.core.config import load_config
from flows.core.records import Seed
from flows.ingest.seeds import LoadResult
from flows.planning.assign import assign_scenario
from flows.publish.collect import Collected
from flows.publish.spill import RowRef
from flows.runs.backfill import rows_by_source

EVEN = {"error_correction": 1.0, "debate": 1.0, "analogy": 1.0}


def test_a_sources_rows_are_its_accepted_dialogues_and_its_seeds_replaced_by_originals(
    tmp_path: Path,
) -> None:
    seeds = [
        Seed.create(src, "math", f"question {i}", f"answer {i}") for src in "ab" for i in range(60)
    ]
    defaults = load_config(None, environ={})
    cfg = defaults.model_copy(
        update={
            "scenarios": defaults.scenarios.model_copy(update={"proportions": EVEN}),
            "merge": defaults.merge.model_copy(update={"replace_with_original": ["debate"]}),
        }
    )
    debate = [s for s in seeds if assign_scenario(s.id, EVEN) == "debate"]
    simulated = [s for s in seeds if s not in debate]
    collected = Collected(tmp_path / "spill.jsonl")
    accepted = simulated[::2]  # half of the simulated seeds made a dialogue
    collected.refs = [RowRef(s.id, s.id, s.id, None) for s in accepted]

    rows = rows_by_source(cfg, LoadResult(seeds=seeds), collected)

    for source in "ab":
        expected = sum(s.source == source for s in accepted + debate)
        assert rows[source] == expected > 0
    plain = cfg.model_copy(update={"merge": defaults.merge})  # nothing replaced
    assert rows_by_source(plain, LoadResult(seeds=seeds), collected) == {
        source: sum(s.source == source for s in accepted) for source in "ab"
    }
