"""Decontamination: drop seeds that share a long word n-gram with an evaluation set.

The classic test (GPT-3's 13-gram overlap): an evaluation question leaking into training data
almost always shows as a long verbatim word sequence. Evaluation items shorter than n words
are matched on their whole canonical text instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from flows.ingest.dedupe import canonical


def _ngrams(words: list[str], n: int) -> Iterable[str]:
    return (" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


@dataclass
class ContaminationIndex:
    n: int = 13
    grams: dict[str, str] = field(default_factory=dict)  # n-gram -> where it comes from
    short: dict[str, str] = field(default_factory=dict)  # whole short text -> where

    def add(self, text: str, origin: str) -> None:
        words = canonical(text).split()
        if len(words) < self.n:
            self.short.setdefault(" ".join(words), origin)
            return
        for gram in _ngrams(words, self.n):
            self.grams.setdefault(gram, origin)

    def __len__(self) -> int:
        return len(self.grams) + len(self.short)

    def match(self, text: str) -> tuple[str, str] | None:
        """(the shared sequence, where it comes from), or None if the text is clean."""
        words = canonical(text).split()
        whole = " ".join(words)
        if whole in self.short:
            return whole, self.short[whole]
        for gram in _ngrams(words, self.n):
            origin = self.grams.get(gram)
            if origin is not None:
                return gram, origin
        if self.short:
            for short, origin in self.short.items():
                if short and f" {short} " in f" {whole} ":
                    return short, origin
        return None
