"""Quality checks on one dialogue: each returns a verdict and a reason, from the text alone.

Pure functions, so `master run`, `master verify` and the optimizer's metrics share them and they
are tested without a model. A verdict is ``{"ok": True | False | None, "reason": str}``;
``None`` means the check does not apply (a debate has no teacher to reveal the answer), and is
left out of pass rates. The LLM judge is the one check that needs a model
(flows/quality/verification.py)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from flows.core.config import QualityConfig
from flows.quality.answers import code_fidelity, final_answer, math_fidelity, numbers_match
from flows.quality.lengths import approx_tokens
from modules.scenarios.guards import control_tokens, foreign_labels
from modules.scenarios.judge import UNJUDGED

Verdict = dict[str, Any]
Turns = list[dict[str, Any]]

STUDENT_SPEAKERS = ("strong_student", "student_c", "assistant")
# Generic speakers (a ShareGPT row whose layout we cannot map) and the labels that would be
# the other side's words inside their turn.
_OTHER_SIDE = {"assistant": {"teacher", "user", "human"}, "user": {"assistant", "gpt"}}

_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?![\w])")
# An arithmetic step: two numbers joined by an operator, or "= number".
_CALCULATION = re.compile(
    r"\d\s*(?:[+*/×÷^]|\\times|\\div|\\cdot|(?<=\d)\s-\s|\s[x]\s)\s*\(?\s*\d|=\s*\$?\s*-?\d"
)
_DANGLING_WORDS = {
    "and", "or", "the", "a", "an", "to", "of", "with", "is", "are", "so", "then", "because",
    "that", "which", "for", "in", "by", "we", "if", "but",
}  # fmt: skip
_ENGLISH = {
    "the", "a", "an", "is", "are", "was", "of", "to", "and", "in", "that", "it", "for", "you",
    "we", "this", "on", "with", "so", "be", "as", "answer", "not", "can", "have", "i", "what",
}  # fmt: skip
_FOREIGN = {
    "le", "la", "les", "est", "une", "des", "du", "et", "il", "elle", "quand", "pour", "dans",
    "el", "los", "las", "es", "y", "que", "una", "por", "con", "der", "die", "das", "und",
    "ist", "nicht", "ein", "eine", "mit", "auf", "sie", "wir", "ich", "che", "non",
}  # fmt: skip


def verdict(ok: bool | None, reason: str) -> Verdict:
    return {"ok": ok, "reason": reason}


def generated(turns: Turns) -> Turns:
    """Turns a model wrote (fixed text such as the question is not judged)."""
    return [t for t in turns if t.get("role") is not None]


def _prose(text: str) -> str:
    return _FENCE.sub(" ", text)


def _label(turn: dict[str, Any], index: int) -> str:
    return f"turn {index + 1} ({turn['speaker']})"


# --- structure -----------------------------------------------------------------------------


def english_share(text: str) -> float | None:
    """How English a turn reads, 0 to 1; None when it is too short to tell.

    The share of Latin letters, capped at 0 when a longer turn has more French, Spanish or
    German function words than English ones (Latin script alone lets those through)."""
    prose = _prose(text)
    words = _WORD.findall(prose)
    if len(words) < 3:
        return None
    letters = [c for w in words for c in w]
    latin = sum(1 for c in letters if c.isascii()) / len(letters)
    if len(words) >= 8:
        lower = [w.lower() for w in words]
        english = sum(1 for w in lower if w in _ENGLISH)
        foreign = sum(1 for w in lower if w in _FOREIGN)
        if foreign >= 3 and foreign > english:
            return 0.0
        if len(words) >= 20 and english == 0:
            return 0.0
    return latin


def repetition_ratio(text: str, n: int) -> float:
    """1 - distinct/total word n-grams: 0 for fresh text, near 1 for a loop."""
    words = text.split()
    if len(words) < 3 * n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def truncation(turn: dict[str, Any]) -> str | None:
    """Why this turn looks cut off, or None."""
    if turn.get("finish_reason") == "length":
        return "the model stopped at its token limit"
    text = turn["text"].rstrip()
    if text.count("```") % 2:
        return "a code block is never closed"
    if text and text[-1] in ",([{+=-" and not text.endswith("--"):
        return f"it ends with {text[-1]!r}"
    last = text.split()[-1].lower() if text.split() else ""
    if last in _DANGLING_WORDS:
        return f"it ends mid-sentence ({last!r})"
    return None


def _leaks(turn: dict[str, Any]) -> list[str]:
    speaker = turn["speaker"]
    found = foreign_labels(turn["text"], speaker)
    if speaker in _OTHER_SIDE:
        found = [f for f in found if f.split()[0] in _OTHER_SIDE[speaker]]
    return sorted(set(found))


def _first_failure(
    turns: Turns, problem: Any, ok_reason: str, na_reason: str = "no generated turn"
) -> Verdict:
    if not turns:
        return verdict(None, na_reason)
    for i, turn in turns:
        why = problem(turn)
        if why:
            return verdict(False, f"{_label(turn, i)}: {why}")
    return verdict(True, ok_reason)


# An echo: a turn that hands back an earlier turn of another speaker (small models do: a
# teacher repeats the weak student's answer, a strong student the teacher's critique).
# Restating the question is not an echo: words in a run of ECHO_ASKED_NGRAM words that also
# occurs in the question are not a turn's own words, and only own words are compared. Fixed
# text (the analogy's transition) is never a turn that can be echoed.
ECHO_MIN_WORDS = 6  # an earlier turn with fewer own words is too short to tell a copy
ECHO_PREAMBLE_WORDS = 12  # "Sure, here is the corrected solution:" before a verbatim copy
ECHO_ASKED_NGRAM = 4
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def _tokens(text: str) -> list[str]:
    return [w.casefold() for w in _TOKEN.findall(text)]


def asked_ngrams(texts: Iterable[str]) -> frozenset[tuple[str, ...]]:
    """The word runs of the question that a turn may restate freely."""
    n = ECHO_ASKED_NGRAM
    grams = set()
    for text in texts:
        words = _tokens(text)
        grams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return frozenset(grams)


def _own(words: list[str], asked: frozenset[tuple[str, ...]]) -> list[str]:
    n = ECHO_ASKED_NGRAM
    restated = [False] * len(words)
    for i in range(len(words) - n + 1):
        if tuple(words[i : i + n]) in asked:
            restated[i : i + n] = [True] * n
    return [w for w, r in zip(words, restated, strict=True) if not r]


def echo_of(text: str, earlier: str, asked: frozenset[tuple[str, ...]], share: float) -> str | None:
    """How `text` repeats `earlier`, or None: verbatim, after a preamble of at most
    ECHO_PREAMBLE_WORDS words, or with at least `share` of the same own words (counted
    against the longer of the two)."""
    said, before = _tokens(text), _tokens(earlier)
    own_said, own_before = _own(said, asked), _own(before, asked)
    if len(own_before) < ECHO_MIN_WORDS or len(own_said) < ECHO_MIN_WORDS:
        return None
    extra = len(said) - len(before)
    if 0 <= extra <= ECHO_PREAMBLE_WORDS and said[extra:] == before:
        return "verbatim" if extra == 0 else f"after a {extra}-word preamble"
    common = sum((Counter(own_said) & Counter(own_before)).values())
    overlap = common / max(len(own_said), len(own_before))
    if overlap >= share:
        return f"with {overlap:.0%} of the same words"
    return None


def echo_check(turns: Turns, question: str, share: float) -> Verdict:
    """The first generated turn that repeats an earlier generated turn of another speaker."""
    asked = asked_ngrams([question])
    own = [(i, t) for i, t in enumerate(turns) if t.get("role") is not None]
    if not own:
        return verdict(None, "no generated turn")
    for k, (i, turn) in enumerate(own):
        for j, earlier in own[:k]:
            if earlier["speaker"] == turn["speaker"]:
                continue
            how = echo_of(turn["text"], earlier["text"], asked, share)
            if how:
                return verdict(False, f"{_label(turn, i)} repeats {_label(earlier, j)} {how}")
    return verdict(True, "no turn repeats another speaker's")


def structure_checks(turns: Turns, q: QualityConfig, question: str = "") -> dict[str, Verdict]:
    """Empty turns, role leakage, echoes of another speaker, non-English text, lengths,
    repetition loops, truncation."""
    own = [(i, t) for i, t in enumerate(turns) if t.get("role") is not None]

    def empty(t: dict[str, Any]) -> str | None:
        return "empty" if not t["text"].strip() else None

    def leak(t: dict[str, Any]) -> str | None:
        leaked = _leaks(t)
        if leaked:
            return f"speaks as {', '.join(leaked)}"
        tokens = control_tokens(t["text"])
        return f"writes transcript markers ({' '.join(tokens)})" if tokens else None

    def language(t: dict[str, Any]) -> str | None:
        share = english_share(t["text"])
        if share is not None and share < q.english_min:
            return f"not English ({share:.0%} Latin letters)"
        return None

    def length(t: dict[str, Any]) -> str | None:
        text = t["text"].strip()
        if text and len(text) < q.min_turn_chars:
            return f"{len(text)} characters, under {q.min_turn_chars}"
        tokens = approx_tokens(text)
        if tokens > q.max_turn_tokens:
            return f"about {tokens} tokens, over {q.max_turn_tokens}"
        return None

    def loop(t: dict[str, Any]) -> str | None:
        ratio = repetition_ratio(t["text"], q.repetition_ngram)
        if ratio > q.repetition_max:
            return f"repetition loop ({ratio:.0%} repeated {q.repetition_ngram}-grams)"
        return None

    return {
        "empty": _first_failure(own, empty, "no empty turn"),
        "role_leakage": _first_failure(own, leak, "every turn speaks only for its own role"),
        "echo": echo_check(turns, question, q.echo_share),
        "language": _first_failure(own, language, "English"),
        "length": _first_failure(own, length, "turn lengths within bounds"),
        "repetition": _first_failure(own, loop, "no repetition loop"),
        "truncated": _first_failure(own, truncation, "no truncated turn"),
    }


# --- answer fidelity -----------------------------------------------------------------------


def _students(turns: Turns) -> Turns:
    return [t for t in turns if t["speaker"] in STUDENT_SPEAKERS]


def fidelity_check(
    turns: Turns, scenario: str | None, domain: str, reference: str, similar_reference: str = ""
) -> Verdict:
    """The final student turn agrees with the reference (math: the number; code: it parses).

    In analogy the last turn answers the retrieved question, so the student's first solution
    is held to the seed's reference and the last one to the similar question's, when known."""
    students = _students(turns)
    if not students:
        return verdict(False, "no student turn")
    if domain == "general":
        return verdict(None, "general answers are left to the judge")
    check = math_fidelity if domain == "math" else code_fidelity
    if scenario == "analogy" and len(students) >= 2:
        ok, why = check(students[0]["text"], reference)
        results = [(ok, f"first question: {why}")]
        if similar_reference:
            ok2, why2 = check(students[-1]["text"], similar_reference)
            results.append((ok2, f"similar question: {why2}"))
        failed = [why for ok, why in results if ok is False]
        if failed:
            return verdict(False, "; ".join(failed))
        if all(ok is None for ok, _ in results):
            return verdict(None, "; ".join(why for _, why in results))
        return verdict(True, "; ".join(why for _, why in results))
    ok, why = check(students[-1]["text"], reference)
    return verdict(ok, why)


# --- scenario intent -----------------------------------------------------------------------


def numbers_in(text: str) -> list[str]:
    return [m.group(0).replace(",", "") for m in _NUMBER.finditer(text)]


def shared_ngram(a: str, b: str, n: int) -> str | None:
    """The first n-word sequence of b that also occurs in a (case-insensitive), or None."""
    wa, wb = a.lower().split(), b.lower().split()
    if len(wb) < n:
        return None
    grams = {tuple(wa[i : i + n]) for i in range(len(wa) - n + 1)}
    for i in range(len(wb) - n + 1):
        if tuple(wb[i : i + n]) in grams:
            return " ".join(wb[i : i + n])
    return None


def _first(turns: Turns, speaker: str, generated_only: bool = True) -> dict[str, Any] | None:
    for turn in turns:
        if turn["speaker"] == speaker and (turn.get("role") is not None or not generated_only):
            return turn
    return None


def weak_flawed(turns: Turns, domain: str, reference: str) -> Verdict:
    """Error correction needs an error: a weak answer already matching the reference is flawless."""
    weak = _first(turns, "weak_student")
    if weak is None:
        return verdict(None, "no weak student turn")
    if domain != "math":
        return verdict(None, "only decidable for math (a number to compare)")
    ref, got = final_answer(reference), final_answer(weak["text"])
    if ref is None:
        return verdict(None, "the reference has no number")
    if got is None:
        return verdict(True, "the weak answer is incomplete (no final number)")
    if numbers_match(got, ref):
        return verdict(False, f"the weak student's first answer is already right ({got})")
    return verdict(True, f"the weak answer ({got}) differs from the reference ({ref})")


def answer_hidden(turns: Turns, domain: str, question: str, reference: str, n: int) -> Verdict:
    """The teacher's critique must point at errors, not hand over the reference's result."""
    teacher = _first(turns, "teacher")
    if teacher is None:
        return verdict(None, "no teacher critique")
    text = teacher["text"]
    if domain == "math":
        ref = final_answer(reference)
        if ref is None:
            return verdict(None, "the reference has no number")
        in_question = {x for x in numbers_in(question)}
        for raw in numbers_in(text):
            if raw in in_question:
                continue
            value = final_answer(raw)
            if value is not None and numbers_match(value, ref):
                return verdict(False, f"the teacher's critique states the answer ({raw})")
        return verdict(True, "the critique does not state the answer")
    copied = shared_ngram(text, reference, n)
    if copied:
        return verdict(False, f"the teacher's critique copies the reference: '{copied}'")
    return verdict(True, "the critique does not copy the reference")


def no_calculation(turns: Turns) -> Verdict:
    """The analogy teacher explains the method and must not do the arithmetic."""
    teacher = _first(turns, "teacher")
    if teacher is None:
        return verdict(None, "no teacher explanation")
    match = _CALCULATION.search(_prose(teacher["text"]))
    if match:
        start = max(0, match.start() - 12)
        snippet = " ".join(teacher["text"][start : match.end() + 12].split())
        return verdict(False, f"the teacher's explanation calculates: '{snippet}'")
    return verdict(True, "the explanation has no calculation")


def intent_checks(
    turns: Turns, scenario: str | None, domain: str, question: str, reference: str, n: int
) -> dict[str, Verdict]:
    na = verdict(None, f"not a check of {scenario or 'unknown'} dialogues")
    if scenario == "error_correction":
        return {
            "weak_flawed": weak_flawed(turns, domain, reference),
            "answer_hidden": answer_hidden(turns, domain, question, reference, n),
            "no_calculation": na,
        }
    if scenario == "analogy":
        return {"weak_flawed": na, "answer_hidden": na, "no_calculation": no_calculation(turns)}
    return {"weak_flawed": na, "answer_hidden": na, "no_calculation": na}


# --- together ------------------------------------------------------------------------------


def check_dialogue(
    turns: Turns,
    *,
    scenario: str | None,
    domain: str,
    question: str,
    reference: str,
    q: QualityConfig,
    similar_reference: str = "",
) -> dict[str, Verdict]:
    """Every check but the judge, in a stable order."""
    return {
        "fidelity": fidelity_check(turns, scenario, domain, reference, similar_reference),
        **structure_checks(turns, q, question),
        **intent_checks(turns, scenario, domain, question, reference, q.reveal_ngram),
    }


def judge_check(
    result: dict[str, Any] | None,
    min_score: int,
    error: str | None = None,
    unjudged: str = "reject",
) -> Verdict:
    """The judge's verdict as a check: correct and scored at least min_score. An `unjudged`
    verdict (the reply never parsed) fails the check under unjudged="reject" and does not
    apply under "keep"; its reason always starts with "unjudged"."""
    if error is not None:
        return verdict(False, f"the judge could not answer ({error})")
    if result is None:
        return verdict(None, "judge off")
    score, said = result.get("score"), result.get("verdict")
    if said == UNJUDGED:
        reason = str(result.get("reason") or "").strip()
        return verdict(False if unjudged == "reject" else None, f"{UNJUDGED}: {reason}")
    reason = str(result.get("reason") or "").strip()
    ok = said == "correct" and isinstance(score, int) and score >= min_score
    return verdict(ok, f"{said}, score {score}: {reason}")


PROCEDURAL_ERRORS = "procedural_errors"
JUDGE_VERDICTS = ("correct", PROCEDURAL_ERRORS)  # signatures/judge.py's verdict


def judge_said(check: Verdict | None) -> str | None:
    """The judge's own verdict, read back from its check (`judge_check` writes it first in
    the reason): "correct" or "procedural_errors"; None when the judge gave none (off, its
    call failed, its reply never parsed)."""
    if not check:
        return None
    said = str(check.get("reason") or "").split(",", 1)[0]
    return said if said in JUDGE_VERDICTS else None


def failed_hard(checks: dict[str, Verdict], hard: Iterable[str]) -> list[str]:
    """The hard checks this dialogue fails, in check order."""
    wanted = set(hard)
    return [name for name, v in checks.items() if name in wanted and v["ok"] is False]


def pass_rates(all_checks: Iterable[dict[str, Verdict]]) -> dict[str, float]:
    """Per check: passed / (passed + failed); checks that never applied are left out."""
    tally = PassTally()
    for checks in all_checks:
        tally.add(checks)
    return tally.rates()


class PassTally:
    """pass_rates counted as dialogues finish, without keeping their verdicts."""

    def __init__(self) -> None:
        self.passed: dict[str, int] = {}
        self.total: dict[str, int] = {}

    def add(self, checks: dict[str, Verdict]) -> None:
        for name, v in checks.items():
            if v["ok"] is None:
                continue
            self.total[name] = self.total.get(name, 0) + 1
            self.passed[name] = self.passed.get(name, 0) + (1 if v["ok"] else 0)

    def merge(self, other: PassTally) -> None:
        for name, n in other.total.items():
            self.total[name] = self.total.get(name, 0) + n
            self.passed[name] = self.passed.get(name, 0) + other.passed[name]

    def rates(self) -> dict[str, float]:
        return {name: round(self.passed[name] / self.total[name], 4) for name in sorted(self.total)}
