"""Similar-question retrieval for the analogy scenario (the paper: all-MiniLM-L6-v2, cosine).

The pool is every loaded seed of the same domain except this run's analogy questions (the
paper's first-round questions and pool are disjoint). Near-duplicates of the query are
skipped, and one of the top k is drawn with a random seed derived from the query's id, so the
choice is reproducible.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import diskcache
import numpy as np

from flows.core.records import Seed
from modules.cache.disks import SafeBytesDisk, SafeJSONDisk, read_value

Embedder = Callable[[Sequence[str]], np.ndarray]

NEAR_DUPLICATE = 0.95


# the vector cache's folder under cache.dir (raw bytes; "embeddings" held base64 JSON)
VECTORS = "vectors"


def cached_embedder(embed: Embedder, directory: str | Path) -> Embedder:
    """Vectors cached by content (model id + text): an unchanged question is embedded once,
    ever. Values are the float32 bytes and an 8-byte seal binding them to their key (a
    damaged or moved row is recomputed), stored raw: JSON and base64 cost more than the
    write itself, for data that does not compress."""
    model_id = getattr(embed, "model_id", getattr(embed, "__qualname__", "embedder"))
    store = Path(directory) / VECTORS

    def key(text: str) -> str:
        return hashlib.sha256(f"{model_id}\x1f{text}".encode()).hexdigest()[:40]

    def seal(k: str, data: bytes) -> bytes:
        return hashlib.blake2b(data, digest_size=8, key=k.encode()[:64]).digest()

    def cached(texts: Sequence[str]) -> np.ndarray:
        keys = [key(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        with diskcache.Cache(str(store), disk=SafeBytesDisk, cull_limit=0) as cache:
            for k in set(keys):
                value = read_value(cache, k)
                if isinstance(value, bytes) and len(value) > 8 and len(value) % 4 == 0:
                    data, check = value[:-8], value[-8:]
                    if check == seal(k, data):
                        found[k] = np.frombuffer(data, dtype=np.float32)
            missing = list(dict.fromkeys(t for t, k in zip(texts, keys, strict=True)
                                         if k not in found))  # fmt: skip
            if missing:
                vectors = embed(missing)
                with cache.transact():
                    for text, vector in zip(missing, vectors, strict=True):
                        k = key(text)
                        found[k] = np.asarray(vector, dtype=np.float32)
                        data = found[k].tobytes()
                        cache.set(k, data + seal(k, data))
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[k] for k in keys])

    cached.model_id = model_id  # type: ignore[attr-defined]
    return cached


@dataclass(frozen=True)
class Match:
    seed: Seed
    similarity: float


#: Scores within this of each other, or of NEAR_DUPLICATE, are decided by the exact score,
#: never by the blocked product's float32 rounding (its error on unit vectors of a few hundred
#: dimensions is below 3e-5).
MARGIN = 1e-4
#: Candidates shortlisted per query by the blocked product beyond top_k, then scored exactly.
SLACK = 16
#: A block of the matrix product holds at most this many scores (64 MB of float32).
BLOCK_CELLS = 1 << 24
#: Candidate rows scored exactly at a time when a shortlist cannot decide (near-ties).
EXACT_ROWS = 8192


def exact_scores(candidates: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine scores in float64, each a pairwise sum over its own row: a score never depends
    on which other rows or queries are computed with it."""
    return np.sum(
        np.asarray(candidates, dtype=np.float64) * np.asarray(query, dtype=np.float64), axis=1
    )


def _ranked(idx: np.ndarray, scores: np.ndarray, top_k: int) -> list[tuple[int, float]]:
    """The top_k (candidate, score) below the near-duplicate bound, most similar first, ties
    in candidate order."""
    valid = scores < NEAR_DUPLICATE
    idx, scores = idx[valid], scores[valid]
    order = np.lexsort((idx, -scores))[:top_k]
    return [(int(idx[j]), float(scores[j])) for j in order]


def _all_ranked(cv: np.ndarray, query: np.ndarray, top_k: int) -> list[tuple[int, float]]:
    scores = np.concatenate(
        [exact_scores(cv[i : i + EXACT_ROWS], query) for i in range(0, len(cv), EXACT_ROWS)]
    )
    return _ranked(np.arange(len(cv)), scores, top_k)


def top_partners(qv: np.ndarray, cv: np.ndarray, top_k: int) -> list[list[tuple[int, float]]]:
    """For each query row, its top_k candidate rows (index, exact score) below
    NEAR_DUPLICATE, most similar first, ties in candidate order.

    A matrix product per block of queries and a partial sort (argpartition) shortlist
    top_k + SLACK candidates a query; the shortlist is scored again exactly (exact_scores).
    When the shortlist cannot be sure of the top_k (its last exact score is within MARGIN of
    what the product left out), every candidate is scored exactly. So a query's partners are
    its own and its candidates' alone: the same in any block, batch or order."""
    if len(cv) == 0:
        return [[] for _ in range(len(qv))]
    n = len(cv)
    width = min(n, top_k + SLACK)
    rows = max(1, BLOCK_CELLS // n)
    picked: list[list[tuple[int, float]]] = []
    for start in range(0, len(qv), rows):
        block = qv[start : start + rows]
        sims = block @ cv.T
        # certainly near-duplicates whatever the rounding: never shortlisted
        sims[sims >= NEAR_DUPLICATE + MARGIN] = -np.inf
        if width < n:
            short = np.argpartition(-sims, width - 1, axis=1)[:, :width]
        for i, query in enumerate(block):
            if width == n:
                picked.append(_ranked(np.arange(n), exact_scores(cv, query), top_k))
                continue
            idx = short[i]
            ranked = _ranked(idx, exact_scores(cv[idx], query), top_k)
            floor = float(sims[i, idx].min())  # no candidate left out scored above it
            certain = floor == -np.inf or (len(ranked) == top_k and ranked[-1][1] > floor + MARGIN)
            picked.append(ranked if certain else _all_ranked(cv, query, top_k))
    return picked


#: Analogy queries matched (and their picks handed on) at a time: small enough that progress
#: moves within the 10 s between progress lines (benchmarks: scale, longest silence).
QUERY_BATCH = 256
#: Texts embedded at a time: each chunk is cached as it is done, and progress told. The
#: texts are embedded shortest first, so a small chunk pads as little as a large one
#: (benchmarks: embedding, chunks).
EMBED_CHUNK = 128

#: tell(step, done, total): how far a long step has got (e.g. "embedding", 512, 20000)
Tell = Callable[[str, int, int], None]


def _embedded(
    embed: Embedder, texts: Sequence[str], step: str, tell: Tell | None, into: list[np.ndarray]
) -> Iterator[None]:
    """The texts' vectors, in the texts' order, appended to `into` as one array once all are
    done; computed EMBED_CHUNK at a time, shortest texts first (each chunk cached as it is
    done), yielding after each chunk; told at 0 first, since the model's loading comes
    before the first chunk."""
    if tell is not None and texts:
        tell(step, 0, len(texts))
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    vectors: np.ndarray | None = None
    for start in range(0, len(texts), EMBED_CHUNK):
        rows = order[start : start + EMBED_CHUNK]
        chunk = np.asarray(embed([texts[i] for i in rows]), dtype=np.float32)
        if vectors is None:
            vectors = np.empty((len(texts), chunk.shape[1]), dtype=np.float32)
        vectors[rows] = chunk
        if tell is not None:
            tell(step, min(start + EMBED_CHUNK, len(texts)), len(texts))
        yield
    if vectors is not None:
        into.append(vectors)


def similar_batches(
    queries: Sequence[Seed],
    pool: Sequence[Seed],
    embed: Embedder,
    top_k: int,
    tell: Tell | None = None,
    batch: int | None = None,
) -> Iterator[dict[str, Match | None]]:
    """pick_similar a batch of queries at a time, as each batch is matched: first the pool's
    candidates of the queries' domains are embedded (every one: a query's partner is the best
    of all of them), an empty batch yielded after each EMBED_CHUNK (the caller may stop
    there); then each batch of queries is embedded and matched (top_partners), and its picks
    yielded, shortest questions first. A pick is the same whatever the batches: batching
    decides when a partner is found, never which. `batch`: QUERY_BATCH queries by default."""
    if not queries:
        return
    query_ids = {q.id for q in queries}
    domains = {q.domain for q in queries}
    candidates = [s for s in pool if s.id not in query_ids and s.domain in domains]
    texts, embedded = [c.question for c in candidates], []
    for _ in _embedded(embed, texts, "embedding the pool", tell, embedded):
        yield {}
    cv = embedded[0] if embedded else np.zeros((0, 0), dtype=np.float32)
    by_domain: dict[str, list[int]] = {}
    for j, c in enumerate(candidates):
        by_domain.setdefault(c.domain, []).append(j)
    domain_idx = {d: np.asarray(ix) for d, ix in by_domain.items()}
    domain_vectors = {d: cv[ix] for d, ix in domain_idx.items()}
    done = 0
    batch = batch or QUERY_BATCH
    queries = sorted(queries, key=lambda q: len(q.question))  # less padding (_embedded)
    for start in range(0, len(queries), batch):
        part = queries[start : start + batch]
        qv = np.asarray(embed([q.question for q in part]), dtype=np.float32)
        result: dict[str, Match | None] = {q.id: None for q in part}
        for domain, idx in domain_idx.items():
            rows = [i for i, q in enumerate(part) if q.domain == domain]
            if not rows:
                continue
            tops = top_partners(qv[rows], domain_vectors[domain], top_k)
            for i, order in zip(rows, tops, strict=True):
                query = part[i]
                if not order:
                    continue
                j, sim = random.Random(query.id).choice(order)
                result[query.id] = Match(candidates[int(idx[j])], sim)
        done += len(part)
        if tell is not None:
            tell("matching partners", done, len(queries))
        yield result


def pick_similar(
    queries: Sequence[Seed],
    pool: Sequence[Seed],
    embed: Embedder,
    top_k: int,
) -> dict[str, Match | None]:
    """For each query seed id, a similar pool seed of the same domain (None if none fits): one
    of the top_k most similar below the near-duplicate bound, drawn by the query's id."""
    picks: dict[str, Match | None] = {}
    for batch in similar_batches(queries, pool, embed, top_k):
        picks.update(batch)
    return picks


class RetrievalMemory:
    """Which similar question each analogy seed got, remembered across runs (JSON values)."""

    def __init__(self, directory: str | Path) -> None:
        self.cache = diskcache.Cache(str(Path(directory) / "retrieval"), disk=SafeJSONDisk)

    def recall(self, queries: Sequence[Seed], pool: Sequence[Seed]) -> dict[str, Match | None]:
        by_id = {s.id: s for s in pool}
        query_ids = {q.id for q in queries}
        found: dict[str, Match | None] = {}
        for query in queries:
            entry = read_value(self.cache, query.id)
            if not isinstance(entry, dict):
                continue
            partner = by_id.get(str(entry.get("similar")))
            if partner is not None and partner.id not in query_ids:
                found[query.id] = Match(partner, float(entry.get("similarity", 0.0)))
        return found

    def remember(self, picks: dict[str, Match | None]) -> None:
        for query_id, match in picks.items():
            if match is not None:
                self.cache.set(query_id, {"similar": match.seed.id, "similarity": match.similarity})

    def close(self) -> None:
        self.cache.close()
