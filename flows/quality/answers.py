"""Does a dialogue's final student turn agree with the seed's reference answer?

A dialogue is only worth training on if the student ends where the reference does: for math
that is the final number, for code that the code at least parses. Models state numbers in many
dresses (``$1,250.50``, ``**18**``, ``\\boxed{\\frac{3}{4}}``, ``25%``, ``1 1/2 cups``), and a
check that misreads any of them throws away good dialogues or keeps wrong ones, so extraction
is exact (``Fraction``, never ``float``) and prefers what the text marks as its answer over
whichever number happens to come last.

Pure functions on strings, standard library only: tested without a model.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

__all__ = [
    "Number",
    "code_blocks",
    "code_fidelity",
    "final_answer",
    "final_number",
    "looks_like_code",
    "math_fidelity",
    "numbers_match",
]


@dataclass(frozen=True)
class Number:
    """An extracted answer; `percent` is kept apart so 25% can equal both 25 and 0.25.

    `source` says which rule found it ("gsm8k", "boxed", "phrase", "equals", "last"); it is
    left out of equality so two answers compare by what they say, not by how they were found.
    """

    value: Fraction
    percent: bool = False
    source: str = field(default="last", compare=False)

    def __str__(self) -> str:
        return _format(self.value) + ("%" if self.percent else "")


# --- tokenising numbers --------------------------------------------------------------------

_VULGAR = {
    "½": Fraction(1, 2),
    "⅓": Fraction(1, 3),
    "⅔": Fraction(2, 3),
    "¼": Fraction(1, 4),
    "¾": Fraction(3, 4),
    "⅕": Fraction(1, 5),
    "⅖": Fraction(2, 5),
    "⅗": Fraction(3, 5),
    "⅘": Fraction(4, 5),
    "⅙": Fraction(1, 6),
    "⅚": Fraction(5, 6),
    "⅛": Fraction(1, 8),
    "⅜": Fraction(3, 8),
    "⅝": Fraction(5, 8),
    "⅞": Fraction(7, 8),
}
_VULGAR_CHARS = "".join(_VULGAR)
_SIMPLE = r"[0-9]+(?:\.[0-9]+)?"
# One number as written, with what dresses it. The two look-behinds keep digits that belong to
# a word or identifier (x2, step1, COVID-19, a.5, 1/2/3) from counting; units, a sentence's
# full stop and markdown after the number are simply not part of it.
_TOKEN = re.compile(
    rf"""
    (?<![\w.\/])(?<![A-Za-z]-)
    (?P<sign1>[-−])?
    (?:(?:\\?\$|[€£¥₹])[ ]?)?
    (?P<sign2>[-−])?
    (?:
        (?P<lwhole>[0-9]+[ ]?)?\\[dt]?frac[ ]*
        (?:\{{[ ]*(?P<lnum>-?{_SIMPLE})[ ]*\}}[ ]*\{{[ ]*(?P<lden>-?{_SIMPLE})[ ]*\}}
          |(?P<lnum1>[0-9])[ ]*(?P<lden1>[0-9]))
      | (?P<mwhole>[0-9]+)[ ]+(?P<mnum>[0-9]+)/(?P<mden>[0-9]+)(?![0-9]|[ ]?/[ ]?[0-9])
      | (?P<fnum>{_SIMPLE})[ ]?/[ ]?(?P<fden>{_SIMPLE})(?![0-9]|[ ]?/[ ]?[0-9])
      | (?P<vwhole>[0-9]+)?(?P<vulgar>[{_VULGAR_CHARS}])
      | (?P<dec>
            [0-9]{{1,3}}(?:(?:,|\{{,\}}|\\,)[0-9]{{3}})+(?![0-9]|,[0-9])(?:\.[0-9]+)?
          | [0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]{{1,3}}(?![0-9]))?
          | \.[0-9]+
        )
    )
    (?P<percent>[ ]?(?:%|\\%|(?i:per[ ]?cent)\b))?
    """,
    re.VERBOSE,
)
_CALC_ANNOTATION = re.compile(r"<<[^<>\n]*>>")  # GSM8K's calculator notes: <<48/2=24>>


@dataclass(frozen=True)
class _Token:
    start: int
    end: int
    number: Number


def _format(value: Fraction) -> str:
    """Integers as integers, terminating decimals as decimals, the rest as a/b."""
    if value.denominator == 1:
        return str(value.numerator)
    if _decimal_places(value) is not None:
        return format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return f"{value.numerator}/{value.denominator}"


def _decimal_places(value: Fraction) -> int | None:
    """Places of the shortest exact decimal (0.25 -> 2), None for a repeating one (1/3)."""
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    return max(twos, fives) if den == 1 else None


def _decimal(text: str) -> Fraction:
    for sep in ("{,}", "\\,", ","):
        text = text.replace(sep, "")
    return Fraction(Decimal(text))


def _tokens(text: str) -> list[_Token]:
    """Every number in reading order; x/0 is no number, and neither is one too long for int."""
    found: list[_Token] = []
    for m in _TOKEN.finditer(text):
        try:
            parts, negative, percent = _parts(m)
        except (ValueError, ArithmeticError):
            continue
        for i, (start, end, value) in enumerate(parts):
            sign = -1 if negative and i == 0 else 1
            last = i == len(parts) - 1
            found.append(_Token(start, end, Number(sign * value, percent and last)))
    return found


def _parts(m: re.Match[str]) -> tuple[list[tuple[int, int, Fraction]], bool, bool]:
    """A token's value(s) with spans, its sign, its percent; "2 4/2" is two numbers."""
    g = m.groupdict()
    negative = bool(g["sign1"] or g["sign2"])  # "-$-5" is a doubled sign, not +5
    percent = g["percent"] is not None
    parts: list[tuple[int, int, Fraction]] = []
    if g["lnum"] is not None or g["lnum1"] is not None:
        num = Fraction(Decimal(g["lnum"] or g["lnum1"]))
        den = Fraction(Decimal(g["lden"] or g["lden1"]))
        whole = Fraction(int(g["lwhole"])) if g["lwhole"] else Fraction(0)
        if den != 0:
            parts.append((m.start(), m.end(), whole + num / den))
    elif g["mwhole"] is not None:
        whole, num, den = int(g["mwhole"]), int(g["mnum"]), int(g["mden"])
        if 0 < num < den:
            parts.append((m.start(), m.end(), whole + Fraction(num, den)))
        else:  # "2 4/2" is two numbers, not a mixed number
            parts.append((m.start(), m.start("mwhole") + len(g["mwhole"]), Fraction(whole)))
            if den != 0:
                parts.append((m.start("mnum"), m.end(), Fraction(num, den)))
    elif g["fnum"] is not None:
        den = Fraction(Decimal(g["fden"]))
        if den != 0:
            parts.append((m.start(), m.end(), Fraction(Decimal(g["fnum"])) / den))
    elif g["vulgar"] is not None:
        whole = Fraction(int(g["vwhole"])) if g["vwhole"] else Fraction(0)
        parts.append((m.start(), m.end(), whole + _VULGAR[g["vulgar"]]))
    else:
        parts.append((m.start(), m.end(), _decimal(g["dec"])))
    return parts, negative, percent


# --- choosing the final answer -------------------------------------------------------------

_GSM8K = re.compile(r"^[ \t]*####[ \t]*(?P<rest>.*)$", re.MULTILINE)
_BOXED = re.compile(r"\\(?:boxed|fbox)[ ]*\{")
# "the answer is", "final answer:", "**Answer:**", "the result is" ... then the number.
_PHRASE = re.compile(
    r"""\b(?:final[ ]+)?(?:answer|result)\b[*_ \t]*
        (?:(?:is|was|would[ ]+be|will[ ]+be|should[ ]+be|equals)\b|:|=)""",
    re.IGNORECASE | re.VERBOSE,
)
# What may stand between an answer phrase and its number: markup, "approximately", "x =".
_PHRASE_GAP = re.compile(
    r"""(?:\s|[*_`:=~≈(\[{$]|\\[(\[$]|\\approx|approx(?:imately|\.)?|about|around|roughly
        |exactly|just|only|nearly|[A-Za-z][ ]*=)*""",
    re.IGNORECASE | re.VERBOSE,
)
_CLAUSE_END = re.compile(r"[.!?;](?=\s|$)|\n")
_OPERATOR = re.compile(r"\s*(?:[-+*/×÷·^−]|\\times|\\cdot|\\div|x\s)")
_EQUALS = re.compile(r"=|≈|\\approx")
_EQUALS_GAP = re.compile(r"[\s*_$]*")
MAX_PHRASE_GAP = 60


def _balanced(text: str, open_at: int) -> int | None:
    """Index of the brace closing the one at `open_at`; boxed answers nest (\\frac{}{})."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _from_gsm8k(text: str, tokens: list[_Token]) -> Number | None:
    lines = list(_GSM8K.finditer(text))
    if not lines:
        return None
    line = lines[-1]
    inside = [t for t in tokens if line.start("rest") <= t.start and t.end <= line.end("rest")]
    return inside[0].number if inside else None


def _from_boxed(text: str, tokens: list[_Token]) -> Number | None:
    """The last box that holds a number; "x = 5" in a box means 5, hence its last number."""
    for m in reversed(list(_BOXED.finditer(text))):
        close = _balanced(text, m.end() - 1)
        end = len(text) if close is None else close
        inside = [t for t in tokens if m.end() <= t.start and t.end <= end]
        if inside:
            return inside[-1].number
    return None


def _from_phrase(text: str, tokens: list[_Token]) -> tuple[int, Number] | None:
    """The last answer phrase followed (after markup only) by a number, with its position.

    "The answer is 20 - 2 = 18" states 18: when the first number starts a calculation that
    the same clause finishes with "=", the number after the last "=" is the answer."""
    best: tuple[int, Number] | None = None
    for m in _PHRASE.finditer(text):
        after = [t for t in tokens if t.start >= m.end()]
        if not after or after[0].start - m.end() > MAX_PHRASE_GAP:
            continue
        if not _PHRASE_GAP.fullmatch(text, m.end(), after[0].start):
            continue
        first = after[0]
        stop = _CLAUSE_END.search(text, first.end)
        clause_end = stop.start() if stop else len(text)
        clause = text[first.end : clause_end]
        chosen = first
        if _OPERATOR.match(clause) and "=" in clause:
            last_eq = first.end + clause.rindex("=")
            later = [t for t in after if last_eq < t.start and t.end <= clause_end]
            chosen = later[0] if later else first
        best = (chosen.start, chosen.number)
    return best


def _from_equals(text: str, tokens: list[_Token]) -> tuple[int, Number] | None:
    """The result of the last "=" on the last line: "so 48 + 24 = 72 clips in May" states 72."""
    body = text.rstrip()
    line_start = body.rfind("\n") + 1
    for m in reversed(list(_EQUALS.finditer(body, line_start))):
        after = [t for t in tokens if t.start >= m.end()]
        if after and _EQUALS_GAP.fullmatch(text, m.end(), after[0].start):
            return after[0].start, after[0].number
    return None


def final_answer(text: str) -> Number | None:
    """The answer a text commits to, most explicit marking first.

    A GSM8K ``#### n`` line, else the last ``\\boxed{}``, else the later of the last answer
    phrase ("the answer is n", "final answer: n") and a closing "= n" (a correction after an
    answer phrase supersedes it), else the last number at all. Worked steps mention many
    numbers, and only the marked one is the answer: "The answer is 18. Check: 2 pens left."
    """
    text = _CALC_ANNOTATION.sub("", text)
    tokens = _tokens(text)
    if not tokens:
        return None
    for rule, find in (("gsm8k", _from_gsm8k), ("boxed", _from_boxed)):
        found = find(text, tokens)
        if found is not None:
            return Number(found.value, found.percent, rule)
    phrase, equals = _from_phrase(text, tokens), _from_equals(text, tokens)
    if phrase is not None and (equals is None or "\n" not in text[phrase[0] : equals[0]]):
        return Number(phrase[1].value, phrase[1].percent, "phrase")
    if equals is not None:
        return Number(equals[1].value, equals[1].percent, "equals")
    last = tokens[-1].number
    return Number(last.value, last.percent, "last")


def final_number(text: str) -> Fraction | None:
    """The final answer's value as written: "25%" gives 25 (final_answer keeps the flag)."""
    found = final_answer(text)
    return None if found is None else found.value


# --- comparing -----------------------------------------------------------------------------

REL_TOL = Fraction(1, 10**6)
ROUNDED_PLACES = 4


def _close(a: Fraction, b: Fraction) -> bool:
    """Exact, or one side is a decimal rounded (or cut) at 4+ places from the other.

    A side written as a decimal with d >= 4 places (0.3333, 0.333333) may be a rounding: the
    two match when they differ by at most one unit in its last place, 10**-d (the coarser
    side's when both are), or by a relative 1e-6 (float noise: 0.30000000000000004 is 0.3).
    So 0.3333, 0.6666 and 0.333333 match 1/3 and 2/3, but 0.33 does not match 1/3: two
    places cannot tell a rounding from another answer. Integers and short decimals are only
    ever compared exactly (1000000 != 1000001, 0.3 != 0.33)."""
    if a == b:
        return True
    places = [p for p in (_decimal_places(a), _decimal_places(b)) if p and p >= ROUNDED_PLACES]
    if not places:
        return False
    diff = abs(a - b)
    return diff <= Fraction(1, 10 ** min(places)) or diff <= REL_TOL * max(abs(a), abs(b))


def _as_number(x: Number | Fraction | int) -> Number:
    return x if isinstance(x, Number) else Number(Fraction(x))


def numbers_match(a: Number | Fraction | int | None, b: Number | Fraction | int | None) -> bool:
    """Do two extracted answers state the same quantity? None matches nothing.

    Values compare by `_close` (exact, or a 4+ place decimal within its last place). A
    percent on one side only matches the other side's value read as a fraction (25% == 0.25)
    and also its bare value (25% == 25): GSM8K writes "what percent ..." answers as "#### 25",
    so a student's "25%" is right there too. Percent on both sides compares the numbers."""
    if a is None or b is None:
        return False
    x, y = _as_number(a), _as_number(b)
    if x.percent == y.percent:
        return _close(x.value, y.value)
    pct, other = (x, y) if x.percent else (y, x)
    return _close(pct.value / 100, other.value) or _close(pct.value, other.value)


def math_fidelity(final_text: str, reference: str) -> tuple[bool | None, str]:
    """The final turn's answer equals the reference's; undecidable without a reference number."""
    ref = final_answer(reference)
    if ref is None:
        return None, "reference has no number"
    got = final_answer(final_text)
    if got is None:
        return False, "no number in the final turn"
    if not numbers_match(got, ref):
        return False, f"final answer {got} != reference {ref}"
    shown = "" if str(got) == str(ref) else f" {ref}"
    return True, f"final answer {got} matches reference{shown}"


# --- code ----------------------------------------------------------------------------------

# CommonMark fences: ``` or ~~~ (3+), an info string, and a closing fence of the same kind at
# least as long; an unclosed fence runs to the end (a reply cut off mid-block).
_FENCE = re.compile(
    r"^(?P<indent>[ ]{0,3})(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n"
    r"(?P<code>.*?)"
    r"(?:^[ ]{0,3}(?P=fence)[`~]*[ \t]*$|\Z)",
    re.MULTILINE | re.DOTALL,
)
PYTHON_TAGS = frozenset({"python", "py", "python3", "py3", "ipython", "ipython3", "pycon"})
# A line that is code in Python or a C-like language, never an English sentence. Keywords are
# matched case-sensitively: prose says "Return the list", code says "return xs".
_CODE_LINE = re.compile(
    r"""^\s*(?:
        @[A-Za-z_][\w.]*(?:\(.*\))?\s*$
      | (?:async\s+)?def\s+\w+\s*\(.*\)\s*(?:->.*)?:\s*(?:\#.*)?$
      | class\s+\w+\s*(?:\(.*\))?\s*:\s*(?:\#.*)?$
      | def\s+[\w.?!]+\s*(?:\(.*\))?\s*$ | end\s*$
      | import\s+[\w.]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+(?:\s+as\s+\w+)?)*\s*;?\s*$
      | from\s+[\w.]+\s+import\s+\S.*
      | (?:return|yield|raise)\b(?!\s+(?:the|a|an|to|of|it|this|that)\b).*$
      | (?:pass|break|continue)\s*;?\s*$
      | for\s+[\w\s,()\[\]]+\s+in\s+.+:\s*$
      | (?:if|elif|while)\s+.+:\s*$
      | (?:else|try|finally)\s*:\s*$
      | except\b.*:\s*$
      | with\s+.+\s+as\s+\w+\s*:\s*$
      | .*[\w)\]"'+\-]\s*;\s*(?://.*)?$
      | .*\)\s*\{\s*$
      | \}\s*(?:else\b.*)?;?\s*$
      | \#include\s*[<"]
      | (?:public|private|protected|static)\s+[\w<>\[\],]+\s+\w+
      | (?:const|let|var)\s+\w+\s*=
      | function\s*\w*\s*\(
      | [A-Za-z_][\w.]*\(.*\)\s*;?\s*(?:\#.*)?$
      | SELECT\s.+|(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|CREATE\s+TABLE)\s+\S.*
      | (?:FROM|WHERE|(?:INNER\s+|LEFT\s+|RIGHT\s+)?JOIN|SET|VALUES|GROUP\s+BY|ORDER\s+BY)\s+\S.*
      | [A-Za-z_][\w.]*(?:\[[^\]]*\])?\s*(?:[-+*/%]|//)?=\s*(?:[\[{"']|.*\b[A-Za-z_]\w*\()
      | </?[A-Za-z][\w-]*(?:\s[^<>]*)?/?>
    )""",
    re.VERBOSE,
)
# Untagged blocks in another language must not be parsed as Python.
_OTHER_LANGUAGE = re.compile(
    r"""[;]\s*$|\)\s*\{\s*$|^\s*\#include\b|\bfunction\s*\w*\s*\([^)\n]*\)\s*\{
      |^\s*(?:const|let|var)\s+\w
      |console\.log|System\.out|\bstd::|^\s*<[A-Za-z!/]|^\s*\$\s|^\s*end\s*$|^\s*puts\s
      |^\s*(?:SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP)\s""",
    re.MULTILINE | re.VERBOSE | re.IGNORECASE,
)
_PYTHON_HINT = re.compile(
    r"^\s*(?:def|class|import|from\s+\S+\s+import|return|print\s*\(|for\s+\w.*\s+in\s)",
    re.MULTILINE,
)
_MAGIC = re.compile(r"^(?P<indent>\s*)[%!]")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """Fenced blocks as (language, code): the fence says what the model meant to be code."""
    blocks: list[tuple[str, str]] = []
    for m in _FENCE.finditer(text):
        info = m.group("info").strip().lstrip("{.").split()
        lang = info[0].rstrip("}").lower() if info else ""
        indent = len(m.group("indent"))
        lines = m.group("code").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if indent:  # a fence indented in a list item: its lines share that indentation
            lines = [_strip_indent(line, indent) for line in lines]
        blocks.append((lang, "\n".join(lines)))
    return blocks


def _strip_indent(line: str, width: int) -> str:
    spaces = len(line) - len(line.lstrip(" "))
    return line[min(spaces, width) :]


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def looks_like_code(text: str) -> bool:
    """Is this text a program (rather than prose about one)? Decides whether code is owed.

    A fenced block is code. Unfenced, two or more code-shaped lines are (``def``/``return``,
    ``for ... :``, ``import``, braces, lines ending in ";", calls, HTML tags); so is a single
    such line when it is the whole text ("SELECT ...;", "print(x)") or the text parses as
    Python. Prose, math working ("x = 5", "48/2 = 24") and lone numbers are not."""
    if code_blocks(text):
        return True
    lines = [line for line in text.splitlines() if line.strip()]
    hits = sum(1 for line in lines if _CODE_LINE.match(line))
    if hits >= 2:
        return True
    return hits == 1 and (len(lines) == 1 or _parses(text))


def _is_python(lang: str, code: str) -> bool:
    if lang in PYTHON_TAGS:
        return True
    if lang:
        return False
    if _OTHER_LANGUAGE.search(code):
        return False
    return bool(_PYTHON_HINT.search(code)) or any(_CODE_LINE.match(x) for x in code.splitlines())


def _python_source(code: str) -> str:
    """REPL transcripts and notebook magics, as the Python they stand for.

    ``>>>``/``...`` prompts are removed and their output lines blanked; ``%magic`` and
    ``!shell`` lines become ``pass``. Line numbers are kept so errors point at the block."""
    lines = code.split("\n")
    if any(line.startswith(">>>") for line in lines):
        out = []
        for line in lines:
            if line.startswith((">>> ", "... ")) or line in (">>>", "..."):
                out.append(line[4:])
            else:
                out.append("")
        lines = out
    return "\n".join(_MAGIC.sub(r"\g<indent>pass  # ", line) for line in lines)


def code_fidelity(final_text: str, reference: str) -> tuple[bool | None, str]:
    """Python in the final turn parses, and a code reference is answered with code.

    Parsing is the check that needs no sandbox: it catches truncated and garbled code without
    running a model's program. Blocks are numbered from 1 among all fenced blocks in the turn.
    None when nothing applies: a prose reference and no Python in the answer."""
    blocks = code_blocks(final_text)
    checked = 0
    for index, (lang, code) in enumerate(blocks, start=1):
        if not _is_python(lang, code):
            continue
        checked += 1
        try:
            ast.parse(_python_source(code))
        except SyntaxError as err:
            where = f" (line {err.lineno})" if err.lineno else ""
            name = lang or "untagged"
            return False, f"code block {index} ({name}) does not parse: {err.msg}{where}"
        except (ValueError, RecursionError, MemoryError) as err:
            return False, f"code block {index} ({lang or 'untagged'}) does not parse: {err}"
    reference_is_code = looks_like_code(reference)
    answer_has_code = bool(blocks) or looks_like_code(final_text)
    if reference_is_code and not answer_has_code:
        return False, "reference is code but the final turn has none"
    if checked:
        counted = "1 python block parses" if checked == 1 else f"{checked} python blocks parse"
        return True, counted
    if reference_is_code:
        return True, "reference is code and the final turn has code"
    if blocks:
        return None, "no python block to check"
    return None, "not code"
