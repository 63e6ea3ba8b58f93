"""How far the checks and the judge agree with a person's labels: precision, recall and
Cohen's kappa, so a judge model is measured before it is trusted to filter.

A label says a dialogue is `ok` or names the defects a person found in it: a check's name
(the check that should catch it), a group (`structure`, `intent`: one of its checks), or
`procedural_errors` (a mistake in the reasoning, which only the judge reads for). Each check
is compared with the labels of its own kind; the judge, whose verdict covers the whole
dialogue, and the filter as configured (any hard check failing) with every defect. A row
where a check does not apply (its verdict is None) is left out of that check's figures.

Pure functions: `master verify --labels FILE` (flows/commands/verify_dataset.py) reads the
file and prints the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flows.core.config import CHECK_GROUPS, CHECKS
from flows.quality.checks import PROCEDURAL_ERRORS

OK = "ok"
#: What a label may name besides `ok`, in the order the table lists them.
DEFECT_KINDS: tuple[str, ...] = (
    *(c for c in CHECKS if c != "judge"),
    *CHECK_GROUPS,
    PROCEDURAL_ERRORS,
)
#: The rows that compare a verdict on the whole dialogue with every defect.
JUDGE, FILTER = "judge", "filter"

Label = frozenset[str]  # the defect kinds; empty: ok
UNMATCHED_SHOWN = 20


def parse_label(value: Any) -> Label:
    """A label's value (`ok`, a kind, or a list of kinds) as its set of defect kinds."""
    kinds = [value] if isinstance(value, str) else value
    if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
        raise ValueError(f"label must be {OK!r}, a defect kind or a list of kinds, got {value!r}")
    if kinds == [OK]:
        return frozenset()
    unknown = [k for k in kinds if k not in DEFECT_KINDS]
    if unknown:
        raise ValueError(
            f"unknown defect kind {unknown[0]!r} (known: {OK}, {', '.join(DEFECT_KINDS)})"
        )
    return frozenset(kinds)


@dataclass(frozen=True)
class Agreement:
    """One verdict against the labels, as a confusion matrix: a positive is a defect."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def precision(self) -> float | None:
        """Of the dialogues it flagged, the share the labels call defective."""
        flagged = self.tp + self.fp
        return self.tp / flagged if flagged else None

    def recall(self) -> float | None:
        """Of the defective dialogues, the share it flagged."""
        defects = self.tp + self.fn
        return self.tp / defects if defects else None

    def kappa(self) -> float | None:
        """Cohen's kappa: agreement beyond what the two rates would give by chance (1 is
        perfect, 0 chance, below 0 worse); None when chance already agrees on every row."""
        n = self.n
        if not n:
            return None
        observed = (self.tp + self.tn) / n
        flagged, defects = self.tp + self.fp, self.tp + self.fn
        chance = (flagged * defects + (n - flagged) * (n - defects)) / (n * n)
        return (observed - chance) / (1 - chance) if chance < 1 else None

    def block(self) -> dict[str, Any]:
        def rounded(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {
            "rows": self.n,
            "defects": self.tp + self.fn,
            "flagged": self.tp + self.fp,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "precision": rounded(self.precision()),
            "recall": rounded(self.recall()),
            "kappa": rounded(self.kappa()),
        }


def agreement(pairs: Iterable[tuple[bool, bool]]) -> Agreement:
    """(flagged, defective) per row, counted."""
    tp = fp = fn = tn = 0
    for flagged, defective in pairs:
        tp += flagged and defective
        fp += flagged and not defective
        fn += defective and not flagged
        tn += not flagged and not defective
    return Agreement(tp, fp, fn, tn)


@dataclass(frozen=True)
class Judged:
    """What the verifier said about one dialogue: each check's verdict and the filter's."""

    key: str
    checks: Mapping[str, Mapping[str, Any]]
    accepted: bool


def _failed(checks: Mapping[str, Mapping[str, Any]], names: Iterable[str]) -> bool | None:
    """Whether any of these checks failed; None when none of them applies."""
    oks = [checks[n]["ok"] for n in names if n in checks and checks[n]["ok"] is not None]
    return None if not oks else any(ok is False for ok in oks)


def calibrate(rows: Iterable[Judged], labels: Mapping[str, Label]) -> dict[str, Any]:
    """Each check, each group, the judge and the filter against the labels of the rows that
    have one: {labelled, unmatched (labels no row has), unmatched_ids (the first
    UNMATCHED_SHOWN), agreement: {name: Agreement.block()}}."""
    pairs: dict[str, list[tuple[bool, bool]]] = {}
    seen: set[str] = set()

    def add(name: str, flagged: bool | None, defective: bool) -> None:
        if flagged is not None:
            pairs.setdefault(name, []).append((flagged, defective))

    labelled = 0
    for row in rows:
        label = labels.get(row.key)
        if label is None:
            continue
        labelled += 1
        seen.add(row.key)
        for name in CHECKS:
            if name != JUDGE:
                add(name, _failed(row.checks, [name]), name in label)
        for group, members in CHECK_GROUPS.items():
            add(group, _failed(row.checks, members), bool(label & {group, *members}))
        add(JUDGE, _failed(row.checks, [JUDGE]), bool(label))
        add(FILTER, not row.accepted, bool(label))
    order = [*(c for c in CHECKS if c != JUDGE), *CHECK_GROUPS, JUDGE, FILTER]
    unmatched = sorted(set(labels) - seen)
    return {
        "labelled": labelled,
        "unmatched": len(unmatched),
        "unmatched_ids": unmatched[:UNMATCHED_SHOWN],
        "agreement": {name: agreement(pairs[name]).block() for name in order if name in pairs},
    }


def calibration_table(calibration: Mapping[str, Any]) -> list[str]:
    """The agreement as aligned lines: rows compared, defects labelled, flagged, precision,
    recall, kappa ("-" where undefined)."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    lines = [
        f"{'check':<16}{'rows':>6}{'defects':>9}{'flagged':>9}{'precision':>11}"
        f"{'recall':>9}{'kappa':>8}"
    ]
    for name, a in calibration["agreement"].items():
        kappa = "-" if a["kappa"] is None else f"{a['kappa']:.2f}"
        lines.append(
            f"{name:<16}{a['rows']:>6}{a['defects']:>9}{a['flagged']:>9}"
            f"{pct(a['precision']):>11}{pct(a['recall']):>9}{kappa:>8}"
        )
    return lines
