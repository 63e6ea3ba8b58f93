"""Analogy partners: the blocked matcher picks what one pass per query picks, whatever the
blocks and batches; planning hands the other jobs over before any retrieval, and the analogy
jobs in batches, partners sticky across runs."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from conftest import hashing_embedder
from flows.core.config import load_config
from flows.core.records import Seed
from flows.ingest.seeds import LoadResult
from flows.planning import retrieval
from flows.planning.jobs import plan_jobs, plan_stream
from flows.planning.retrieval import NEAR_DUPLICATE, pick_similar, similar_batches, top_partners

WORDS = "apples pears trains hours tom ann buys eats sells cost price speed km total each".split()


def _seeds(n: int, domain: str = "math", start: int = 0) -> list[Seed]:
    rng = random.Random(start)
    return [
        Seed.create(
            "s", domain, " ".join(rng.choices(WORDS, k=rng.randint(4, 12))) + f" {i}", f"{i}"
        )
        for i in range(start, start + n)
    ]


def per_query(qv: np.ndarray, cv: np.ndarray, top_k: int) -> list[list[int]]:
    """The matcher as one matrix-vector product per query (the reference)."""
    picked = []
    for q in qv:
        sims = cv @ q
        valid = np.flatnonzero(sims < NEAR_DUPLICATE)
        picked.append([int(j) for j in valid[np.argsort(-sims[valid], kind="stable")[:top_k]]])
    return picked


@pytest.mark.parametrize("top_k", [1, 3, 10])
def test_the_blocked_matcher_picks_what_one_pass_per_query_picks(
    top_k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(top_k)
    cv = rng.standard_normal((400, 32)).astype(np.float32)
    cv /= np.linalg.norm(cv, axis=1, keepdims=True)
    qv = rng.standard_normal((90, 32)).astype(np.float32)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    qv[:5] = cv[:5]  # exact duplicates of candidates: never their own partner
    expected = per_query(qv, cv, top_k)
    assert [[j for j, _ in row] for row in top_partners(qv, cv, top_k)] == expected
    monkeypatch.setattr(retrieval, "BLOCK_CELLS", 400 * 7)  # blocks of 7 queries
    blocked = top_partners(qv, cv, top_k)
    assert [[j for j, _ in row] for row in blocked] == expected
    for i in range(5):
        assert i not in [j for j, _ in blocked[i]]


def test_near_ties_are_decided_by_the_exact_score_then_by_candidate_order() -> None:
    base = np.zeros((1, 8), dtype=np.float32)
    base[0, 0] = 1.0
    cv = np.zeros((40, 8), dtype=np.float32)
    cv[:, 1] = 1.0  # 40 candidates, all scoring 0 with the query: one tie
    cv[17] = [0.6, 0.8, 0, 0, 0, 0, 0, 0]  # the best
    ranked = top_partners(base, cv, 3)[0]
    assert [j for j, _ in ranked] == [17, 0, 1]
    assert ranked[0][1] == pytest.approx(0.6)


def test_partners_are_the_same_whatever_the_batches_and_the_order(tmp_path: Path) -> None:
    queries, pool = _seeds(60, start=0), _seeds(300, start=1000)
    pool += _seeds(40, "code", start=5000) + queries
    whole = pick_similar(queries, pool, hashing_embedder, top_k=5)
    assert all(m is not None and m.seed.domain == "math" for m in whole.values())
    # the reference: every vector computed on its own, one pass per query, the same draw
    ids = {q.id for q in queries}
    candidates = [s for s in pool if s.domain == "math" and s.id not in ids]
    cv = np.stack([hashing_embedder([c.question])[0] for c in candidates])
    qv = np.stack([hashing_embedder([q.question])[0] for q in queries])
    for query, q in zip(queries, qv, strict=True):
        scores = retrieval.exact_scores(cv, q)
        valid = np.flatnonzero(scores < NEAR_DUPLICATE)
        top = valid[np.lexsort((valid, -scores[valid]))][:5].tolist()
        assert whole[query.id].seed is candidates[random.Random(query.id).choice(top)]  # type: ignore[union-attr]
    told: list[tuple[str, int, int]] = []

    def tell(*step: object) -> None:
        told.append(step)  # type: ignore[arg-type]

    for batch in (1, 7, 512):
        told.clear()
        shuffled = random.Random(batch).sample(queries, len(queries))
        picks: dict = {}
        sizes: list[int] = []
        for part in similar_batches(shuffled, pool, hashing_embedder, 5, tell, batch=batch):
            if not part:  # a chunk of the pool embedded
                assert told[-1][0] == "embedding the pool"
                continue
            assert told[-1] == ("matching partners", sum(sizes) + len(part), len(queries))
            sizes.append(len(part))
            picks.update(part)
        assert sizes[:-1] == [batch] * (len(sizes) - 1) and sum(sizes) == len(queries)
        assert picks == whole
        # the math pool only, EMBED_CHUNK at a time
        pool_told = [("embedding the pool", n, 300) for n in (0, 128, 256, 300)]
        assert told[:4] == pool_told


def _loaded(seeds: list[Seed]) -> LoadResult:
    return LoadResult(seeds=seeds, pool=list(seeds), loaded=len(seeds))


def _cfg(tmp_path: Path, cache: bool = True):  # type: ignore[no-untyped-def]
    return load_config(
        None,
        environ={
            "MASTER__CACHE__DIR": str(tmp_path / "cache"),
            "MASTER__CACHE__ENABLED": "true" if cache else "false",
        },
    )


class Counting:
    """hashing_embedder, counting the texts it embeds."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.texts.extend(texts)
        return hashing_embedder(texts)


def test_the_other_jobs_are_ready_before_any_retrieval_and_analogy_jobs_follow(
    tmp_path: Path,
) -> None:
    cfg = _cfg(tmp_path)
    loaded = _loaded(_seeds(300))
    embed = Counting()
    plan = plan_stream(loaded, cfg, embed)
    assert embed.texts == []  # nothing embedded yet
    assert plan.ready and {j.scenario for j in plan.ready} <= {"error_correction", "debate"}
    assert plan.later is not None and 60 < plan.waiting < 140
    later = [job for batch in plan.later for job in batch]
    assert {j.scenario for j in later} == {"analogy"}
    assert len(later) + len(plan.rejects) == plan.waiting
    jobs, _ = plan_jobs(loaded, _cfg(tmp_path / "fresh"), hashing_embedder)
    assert {j.seed.id: j for j in jobs} == {j.seed.id: j for j in [*plan.ready, *later]}
    planned = {j.seed.id for j in jobs}
    assert [j.seed.id for j in jobs] == [s.id for s in loaded.seeds if s.id in planned]


def test_the_search_pauses_after_each_chunk_of_the_pool_and_stopped_owes_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Later: an empty batch after each chunk of the pool embedded (where a stopping run can
    stop it); stop() closes the search and hands back the seeds still waiting, with no
    partner, and nothing more is embedded."""
    monkeypatch.setattr(retrieval, "EMBED_CHUNK", 50)
    embed = Counting()
    plan = plan_stream(_loaded(_seeds(300)), _cfg(tmp_path), embed)
    assert plan.later is not None
    waiting = set(plan.later.unplanned)
    assert len(waiting) == plan.waiting
    assert next(plan.later) == [] and len(embed.texts) == 50  # one chunk, then a pause
    assert next(plan.later) == [] and len(embed.texts) == 100
    rest = plan.later.stop()
    assert {j.seed.id for j in rest} == waiting and all(j.similar is None for j in rest)
    assert plan.later.unplanned == {} and list(plan.later) == [] and len(embed.texts) == 100
    # run to the end, every seed leaves `unplanned` as its job or reject is handed on
    again = plan_stream(_loaded(_seeds(300)), _cfg(tmp_path / "again"), embed)
    assert again.later is not None
    jobs = [job for batch in again.later for job in batch]
    assert again.later.unplanned == {} and again.later.stop() == []
    assert {j.seed.id for j in jobs} | {r.seed_id for r in again.rejects} == waiting


def test_remembered_partners_come_first_and_stay_as_they_are(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    seeds = _seeds(300)
    first, _ = plan_jobs(_loaded(seeds), cfg, hashing_embedder)
    partners = {j.seed.id: j.similar.id for j in first if j.scenario == "analogy"}  # type: ignore[union-attr]
    assert partners

    def reversed_embedder(texts: Sequence[str]) -> np.ndarray:
        return hashing_embedder([t[::-1] for t in texts])  # other vectors, other partners

    embed = Counting()
    plan = plan_stream(_loaded(seeds), cfg, embed)
    batches = list(plan.later or ())
    assert embed.texts == [] and len(batches) == 1  # every partner recalled, none embedded
    assert {j.seed.id: j.similar.id for j in batches[0]} == partners  # type: ignore[union-attr]
    # more seeds: the new analogy seeds are matched, the earlier keep their partners
    more = seeds + _seeds(100, start=300)
    again, _ = plan_jobs(_loaded(more), cfg, reversed_embedder)
    kept = {j.seed.id: j.similar.id for j in again if j.seed.id in partners}  # type: ignore[union-attr]
    assert kept == partners
    fresh, _ = plan_jobs(_loaded(seeds), _cfg(tmp_path / "other"), reversed_embedder)
    assert {j.seed.id: j.similar.id for j in fresh if j.scenario == "analogy"} != partners  # type: ignore[union-attr]


def test_a_seed_with_no_partner_is_rejected_once_the_batches_are_done(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, cache=False)
    seeds = _seeds(200)
    lonely = next(
        s for s in _seeds(50, "code", start=900)
        if plan_stream(_loaded([s]), cfg).waiting
    )  # fmt: skip
    plan = plan_stream(_loaded([*seeds, lonely]), cfg, hashing_embedder)
    later = [job for batch in plan.later or () for job in batch]
    assert [r.seed_id for r in plan.rejects] == [lonely.id]
    assert "no similar code question" in plan.rejects[0].reason
    assert lonely.id not in {j.seed.id for j in later}
