"""Scenario assignment by seed id, and similar-question retrieval for analogy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import PROJECT, SHARED_DATA, hashing_embedder
from flows.core.records import Seed
from flows.planning.assign import assign_scenario, debate_rounds, replaced_by_original

EVEN = {"error_correction": 1.0, "debate": 1.0, "analogy": 1.0}


def _seed(i: int, domain: str = "math", text: str | None = None) -> Seed:
    return Seed.create("s", domain, text or f"question number {i} about apples", f"answer {i}")


def test_assignment_depends_only_on_the_id_and_follows_the_proportions() -> None:
    seeds = [_seed(i) for i in range(3000)]
    first = [assign_scenario(s.id, EVEN) for s in seeds]
    more = [_seed(i) for i in range(3000, 4000)] + seeds  # adding seeds reshuffles nothing
    again = {s.id: assign_scenario(s.id, EVEN) for s in more}
    assert first == [again[s.id] for s in seeds]
    counts = Counter(first)
    assert all(900 < counts[s] < 1100 for s in EVEN)
    only_debate = {"error_correction": 0.0, "debate": 1.0, "analogy": 0.0}
    assert {assign_scenario(s.id, only_debate) for s in seeds[:200]} == {"debate"}
    skewed = Counter(
        assign_scenario(s.id, {"error_correction": 3, "debate": 1, "analogy": 0}) for s in seeds
    )
    assert skewed["analogy"] == 0 and 2000 < skewed["error_correction"] < 2500


def test_a_seed_is_replaced_by_its_original_exactly_when_its_scenario_is_listed() -> None:
    ids = [_seed(i).id for i in range(300)]
    replaced = [i for i in ids if replaced_by_original(i, EVEN, {"debate"})]
    assert replaced == [i for i in ids if assign_scenario(i, EVEN) == "debate"]
    assert 60 < len(replaced) < 140
    assert not any(replaced_by_original(i, EVEN, ()) for i in ids)


def test_debate_rounds_fixed_or_drawn_from_the_id() -> None:
    ids = [_seed(i).id for i in range(400)]
    assert {debate_rounds(i, 2) for i in ids} == {2}
    auto = Counter(debate_rounds(i, "auto") for i in ids)
    assert set(auto) == {1, 2} and min(auto.values()) > 150
    assert [debate_rounds(i, "auto") for i in ids] == [debate_rounds(i, "auto") for i in ids]


def test_similar_question_is_another_pool_question_of_the_same_domain() -> None:
    from flows.planning.retrieval import pick_similar

    queries = [
        _seed(0, "math", "How many apples does Tom have if he buys 3 apples and eats 1?"),
        _seed(1, "code", "Write a Python function that reverses a list."),
    ]
    pool = queries + [
        _seed(2, "math", "How many apples does Ann have if she buys 5 apples and eats 2?"),
        _seed(3, "math", "A train travels 60 km per hour for 3 hours. How far does it go?"),
        _seed(4, "code", "Write a Python function that sorts a list."),
        _seed(5, "general", "Write a poem about apples that Tom buys and eats."),
        _seed(6, "math", "How many apples does Tom have if he buys 3 apples and eats 1?!"),
    ]
    picks = pick_similar(queries, pool, hashing_embedder, top_k=1)
    assert picks[queries[0].id].seed.id == pool[2].id  # not the near-duplicate pool[6]
    assert picks[queries[1].id].seed.id == pool[4].id
    wider = pick_similar(queries, pool, hashing_embedder, top_k=5)
    for q in queries:
        match = wider[q.id]
        assert match is not None and match.seed.domain == q.domain
        assert match.seed.id not in {x.id for x in queries}
    assert wider == pick_similar(queries, pool, hashing_embedder, top_k=5)  # reproducible
    lonely = pick_similar([_seed(9, "general")], [_seed(9, "general")], hashing_embedder, 5)
    assert list(lonely.values()) == [None]


@pytest.mark.embedded
def test_minilm_embeddings_rank_a_paraphrase_first() -> None:
    from flows.planning.minilm import minilm_embedder

    vectors = minilm_embedder()(
        [
            "How many legs does a spider have?",
            "What is the number of legs of a spider?",
            "Write a SQL query that lists all customers.",
        ]
    )
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


@pytest.mark.embedded
def test_the_openvino_minilm_gives_sentence_transformers_vectors() -> None:
    """The run's MiniLM (OpenVINO, flows/planning/minilm.py) against sentence-transformers
    on PyTorch: the same vectors to float32 rounding, so the same neighbours, whatever the
    texts' lengths (one batch pads the short ones; one is cut at max_seq_length)."""
    from flows.planning.minilm import minilm_embedder

    rows = (SHARED_DATA / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    texts = [json.loads(row)["question"] for row in rows]
    texts.append(" ".join(texts[:6]))  # longer than the model's 256 tokens: truncated alike
    ours = minilm_embedder(batch_size=16)(texts)
    reference = minilm_embedder(backend="torch")(texts)
    assert ours.shape == reference.shape == (41, 384)
    assert float((ours * reference).sum(axis=1).min()) > 0.99999
    for v in (ours, reference):
        assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    order = lambda v: np.argsort(-(v @ v.T), axis=1)[:, 1:6]  # noqa: E731
    assert (order(ours) == order(reference)).mean() > 0.98


@pytest.mark.parametrize("scenario", ["error_correction", "debate", "analogy"])
def test_show_prompts_renders_every_call_without_a_model(scenario: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "show-prompts", "--scenario", scenario],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    calls = [line for line in proc.stdout.splitlines() if line.startswith("=== call")]
    expected = {"error_correction": 3, "analogy": 3}.get(scenario)
    if expected:
        assert len(calls) == expected
    else:
        assert len(calls) in (3, 5)
    assert "embedded SmolLM2" not in proc.stderr  # no model was loaded
    # the agents' TurnAdapter: instructions as the system message, no field markers asked for
    assert "--- system ---\nYou are" in proc.stdout and "[[ ##" not in proc.stdout


def test_show_prompts_shows_a_roles_chat_adapter_when_the_config_chooses_it() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "show-prompts", "--scenario", "error_correction"],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=120,
        env={**os.environ, "MASTER__LMS__STRONG__ADAPTER": "chat"},
    )
    assert proc.returncode == 0, proc.stderr
    weak, teacher = proc.stdout.split("=== call 2")[0], proc.stdout.split("=== call 2")[1]
    assert "[[ ##" not in weak and "your objective is" in teacher


def test_vectors_are_cached_by_content_and_never_computed_twice(tmp_path: Path) -> None:
    from conftest import hashing_embedder
    from flows.planning.retrieval import cached_embedder

    seen: list[str] = []

    def counting(texts):  # type: ignore[no-untyped-def]
        seen.extend(texts)
        return hashing_embedder(texts)

    embed = cached_embedder(counting, tmp_path)
    first = embed(["a question", "another question", "a question"])
    assert seen == ["a question", "another question"]
    again = cached_embedder(counting, tmp_path)(["another question", "a new one", "a question"])
    assert seen[2:] == ["a new one"]
    assert np.array_equal(again[0], first[1]) and np.array_equal(again[2], first[0])
    assert np.array_equal(again, hashing_embedder(["another question", "a new one", "a question"]))


def test_a_damaged_or_moved_vector_is_embedded_again(tmp_path: Path) -> None:
    import sqlite3

    from flows.planning.retrieval import VECTORS, cached_embedder

    seen: list[str] = []

    def counting(texts):  # type: ignore[no-untyped-def]
        seen.extend(texts)
        return hashing_embedder(texts)

    cached_embedder(counting, tmp_path)(["one question", "two questions"])
    db = sqlite3.connect(tmp_path / VECTORS / "cache.db")
    rows = db.execute("SELECT key, value FROM Cache ORDER BY key").fetchall()
    (k1, v1), (k2, v2) = rows
    db.execute("UPDATE Cache SET value = ? WHERE key = ?", (v2, k1))  # moved under another key
    db.execute("UPDATE Cache SET value = ? WHERE key = ?", (v2[:-12] + b"\0" * 12, k2))  # damaged
    db.commit()
    db.close()
    seen.clear()
    again = cached_embedder(counting, tmp_path)(["one question", "two questions"])
    assert sorted(seen) == ["one question", "two questions"]
    assert np.array_equal(again, hashing_embedder(["one question", "two questions"]))
