"""Duplicate detection: exact (normalised text) and near-duplicate (MinHash with LSH).

Near-duplicates are found on character 5-gram shingles of the case-folded, punctuation-free
text: a copy with two or three words changed keeps most of its shingles. Signatures are
numpy min-hashes; LSH bands turn the all-pairs comparison into bucket look-ups, and each
candidate pair is confirmed by its estimated Jaccard similarity against the threshold. The
first item of a group is kept and every later one names it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_MASK32 = np.uint64(0xFFFFFFFF)


def canonical(text: str) -> str:
    """Case, accents-as-composed, punctuation and spacing removed: what 'the same text' means."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def exact_key(text: str) -> bytes:
    return hashlib.blake2b(canonical(text).encode("utf-8"), digest_size=16).digest()


def shingles(text: str, n: int = 5) -> np.ndarray:
    """Distinct 64-bit hashes of the character n-grams of the canonical text."""
    data = np.frombuffer(canonical(text).encode("utf-8"), dtype=np.uint8).astype(np.uint64)
    if data.size == 0:
        return np.zeros(1, dtype=np.uint64)
    if data.size < n:
        n = int(data.size)
    width = data.size - n + 1
    h = np.zeros(width, dtype=np.uint64)
    prime = np.uint64(1099511628211)
    for j in range(n):
        h = h * prime + data[j : j + width]
    return np.unique(h)


def lsh_shape(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows) whose S-curve midpoint sits just below the threshold, for recall."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        bands = num_perm // rows
        if (1 / bands) ** (1 / rows) <= threshold * 0.85:
            best = (bands, rows)
    return best


@dataclass(frozen=True)
class NearDuplicate:
    index: int  # position of the removed item
    kept: int  # position of the item it duplicates
    similarity: float


class MinHashLSH:
    """Greedy near-duplicate filter: add items in order, each is checked against those kept."""

    def __init__(self, threshold: float = 0.7, num_perm: int = 128, ngram: int = 5, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self.threshold = threshold
        self.ngram = ngram
        self.bands, self.rows = lsh_shape(num_perm, threshold)
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self.signatures: dict[int, np.ndarray] = {}

    def signature(self, text: str) -> np.ndarray:
        h = shingles(text, self.ngram)
        return ((h[:, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32) & _MASK32).min(
            axis=0
        )

    def check_and_add(self, index: int, text: str) -> NearDuplicate | None:
        sig = self.signature(text)
        keys = [sig[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.bands)]
        seen: set[int] = set()
        for band, key in enumerate(keys):
            for other in self.buckets[band].get(key, ()):
                if other in seen:
                    continue
                seen.add(other)
                similarity = float(np.mean(self.signatures[other] == sig))
                if similarity >= self.threshold:
                    return NearDuplicate(index, other, similarity)
        self.signatures[index] = sig
        for band, key in enumerate(keys):
            self.buckets[band].setdefault(key, []).append(index)
        return None


def near_duplicates(
    texts: Sequence[str], threshold: float = 0.7, num_perm: int = 128, ngram: int = 5
) -> list[NearDuplicate]:
    """Every item that nearly duplicates an earlier kept one, with the one it duplicates."""
    lsh = MinHashLSH(threshold, num_perm, ngram)
    found = []
    for i, text in enumerate(texts):
        dup = lsh.check_and_add(i, text)
        if dup is not None:
            found.append(dup)
    return found
