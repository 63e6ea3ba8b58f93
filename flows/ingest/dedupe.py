"""Duplicate detection: exact (normalised text) and near-duplicate (MinHash with LSH).

Near-duplicates are found on character 5-gram shingles of the case-folded, punctuation-free
text: a copy with two or three words changed keeps most of its shingles. Signatures are
numpy min-hashes; LSH bands turn the all-pairs comparison into bucket look-ups, and each
candidate pair is confirmed by the exact Jaccard similarity of its shingle sets (a 64-hash
estimate is too noisy near the threshold). The
first item of a group is kept and every later one names it.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_MASK32 = np.uint64(0xFFFFFFFF)


_ASCII_NON_WORD = str.maketrans({c: " " for c in map(chr, range(128)) if not (c.isalnum())})


def canonical(text: str) -> str:
    """Case, accents-as-composed, punctuation and spacing removed: what 'the same text' means.

    ASCII text (most rows) takes a translate-and-split path in C; the rest the Unicode regex.
    Both give the words of `\\w+` (minus underscores) joined by single spaces."""
    if text.isascii():
        return " ".join(text.lower().translate(_ASCII_NON_WORD).split())
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def digest(canon: str) -> bytes:
    """16-byte key of an already canonical text: what exact dedupe remembers per row."""
    return hashlib.blake2b(canon.encode("utf-8"), digest_size=16).digest()


def exact_key(text: str) -> bytes:
    return digest(canonical(text))


def shingles(canon: str, n: int = 5) -> np.ndarray:
    """The character n-grams (n <= 8) of a canonical text, each packed into a uint64.

    Every byte offset is read as an overlapping little-endian 8-byte word (a strided view, no
    copy) and masked to its first n bytes: one vectorised step, no per-gram hashing. Repeated
    n-grams are left in; they cannot change a minimum.
    """
    data = canon.encode("utf-8")
    if not data:
        return np.zeros(1, dtype=np.uint64)
    n = min(n, 8, len(data))
    width = len(data) - n + 1
    buffer = data + b"\0" * 8
    words = np.ndarray(shape=(width,), dtype="<u8", buffer=buffer, strides=(1,))
    return words & np.uint64((1 << (8 * n)) - 1)


def lsh_shape(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows), bands x rows <= num_perm, with the S-curve midpoint (1/b)^(1/r) as high
    as possible while still below 0.8 x threshold: recall first (a pair at the threshold
    collides in some band with probability > 0.99), then as few candidates as that allows;
    each candidate is confirmed by its exact Jaccard similarity."""
    best = (num_perm, 1)
    best_mid = 0.0
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        mid = (1 / bands) ** (1 / rows)
        if mid <= threshold * 0.8 and mid > best_mid:
            best, best_mid = (bands, rows), mid
    return best


@dataclass(frozen=True)
class NearDuplicate:
    index: int  # position of the removed item
    kept: int  # position of the item it duplicates
    similarity: float


class MinHashLSH:
    """Greedy near-duplicate filter: add items in order, each is checked against those kept."""

    def __init__(self, threshold: float = 0.7, num_perm: int = 64, ngram: int = 5, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self.threshold = threshold
        self.ngram = ngram
        self.bands, self.rows = lsh_shape(num_perm, threshold)
        # one dict for all bands: a band's key is its rows mixed into one int, salted per band
        self.mix = rng.integers(1, 2**63, size=self.rows, dtype=np.uint64) | np.uint64(1)
        self.salt = rng.integers(0, 2**63, size=self.bands, dtype=np.uint64)
        self.buckets: dict[int, list[int]] = {}
        self.kept: dict[int, np.ndarray] = {}

    def signature(self, grams: np.ndarray) -> np.ndarray:
        """One text's min-hash signature. Per text, not batched: a batch's (shingles x perms)
        matrix spills out of the CPU cache (benchmarks: dedupe)."""
        mixed = (grams[:, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)
        return (mixed & _MASK32).min(axis=0)

    def sketch(self, canon: str) -> tuple[np.ndarray, np.ndarray]:
        """(distinct shingles, signature) of a canonical text: the part worth parallelising."""
        grams = np.unique(shingles(canon, self.ngram))
        return grams, self.signature(grams)

    def check_and_add(
        self, index: int, canon: str, sketch: tuple[np.ndarray, np.ndarray] | None = None
    ) -> NearDuplicate | None:
        """Is this (canonical) text a near-duplicate of a kept one? If not, keep it."""
        grams, full = sketch if sketch is not None else self.sketch(canon)
        sig = full[: self.bands * self.rows].reshape(self.bands, self.rows)
        keys = ((sig * self.mix).sum(axis=1) + self.salt).tolist()
        seen: set[int] = set()
        for key in keys:
            for other in self.buckets.get(key, ()):
                if other in seen:
                    continue
                seen.add(other)
                kept = self.kept[other]
                common = np.intersect1d(kept, grams, assume_unique=True).size
                similarity = common / (kept.size + grams.size - common)
                if similarity >= self.threshold:
                    return NearDuplicate(index, other, similarity)
        self.kept[index] = grams
        for key in keys:
            self.buckets.setdefault(key, []).append(index)
        return None


PARALLEL_FROM = 20_000
_CHUNK = 4_000


def _sketch_chunk(
    args: tuple[list[str], float, int, int],
) -> list[tuple[np.ndarray, np.ndarray]]:
    texts, threshold, num_perm, ngram = args
    lsh = MinHashLSH(threshold, num_perm, ngram)  # same seed: the same permutations
    return [lsh.sketch(t) for t in texts]


def _sketches(
    texts: Sequence[str], lsh: MinHashLSH
) -> Iterator[tuple[np.ndarray, np.ndarray] | None]:
    """Sketches computed by worker processes for large inputs (the LSH pass itself is
    sequential and keeps the main process busy meanwhile); None means compute inline."""
    workers = os.cpu_count() or 1
    if len(texts) < PARALLEL_FROM or workers < 2:
        yield from (None for _ in texts)
        return
    chunks = [
        (list(texts[i : i + _CHUNK]), lsh.threshold, lsh.a.size, lsh.ngram)
        for i in range(0, len(texts), _CHUNK)
    ]
    context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for chunk in pool.map(_sketch_chunk, chunks):
            yield from chunk


#: near_duplicates tells its progress every this many texts
TELL_EVERY = 5000


def near_duplicates(
    texts: Sequence[str],
    threshold: float = 0.7,
    num_perm: int = 64,
    ngram: int = 5,
    tell: Callable[[str, int, int], None] | None = None,
) -> list[NearDuplicate]:
    """Every item that nearly duplicates an earlier kept one, with the one it duplicates;
    `tell("near-dedupe", done, total)` every TELL_EVERY texts and at the end.

    `texts` are canonical (see `canonical`); callers that already hold them skip the work."""
    lsh = MinHashLSH(threshold, num_perm, ngram)
    found = []
    for i, (text, sketch) in enumerate(zip(texts, _sketches(texts, lsh), strict=True)):
        dup = lsh.check_and_add(i, text, sketch)
        if dup is not None:
            found.append(dup)
        if tell is not None and (i + 1) % TELL_EVERY == 0:
            tell("near-dedupe", i + 1, len(texts))
    if tell is not None:
        tell("near-dedupe", len(texts), len(texts))
    return found
