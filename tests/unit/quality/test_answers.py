"""Answer fidelity: extracting the final number, comparing it, and checking code answers.

Tables of texts as models write them, plus real GSM8K and Code Alpaca references, so a
regression in any one spelling of a number shows up as the row that broke.
"""

from __future__ import annotations

import ast
import json
import os
from fractions import Fraction
from pathlib import Path

import pytest

from conftest import PROJECT
from flows.quality.answers import (
    Number,
    code_blocks,
    code_fidelity,
    final_answer,
    final_number,
    looks_like_code,
    math_fidelity,
    numbers_match,
)

F = "```"  # a fence, kept out of the literals so the tables stay readable


def _shared_data() -> Path:
    """/work/shared/data, or where MASTER_SHARED_DATA says, or shared/ beside the clone."""
    default = Path("/work/shared/data")
    if default.is_dir():
        return default
    env = os.environ.get("MASTER_SHARED_DATA")
    if env:
        return Path(env)
    return PROJECT.parent / "shared" / "data"


SHARED = _shared_data()
GSM8K_TRAIN = SHARED / "gsm8k" / "train.jsonl"
CODE_ALPACA = SHARED / "code_alpaca" / "code_alpaca_2k.json"


def _gsm8k_rows(n: int) -> list[dict[str, str]]:
    if not GSM8K_TRAIN.is_file():
        pytest.skip(f"no GSM8K data at {GSM8K_TRAIN}")
    rows = []
    with GSM8K_TRAIN.open(encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


def _gsm8k_value(answer: str) -> Fraction:
    return Fraction(answer.split("#### ")[-1].strip().replace(",", ""))


Q = Fraction  # short for the tables


# --- final_number --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # GSM8K "#### n" wins over everything, calculator notes are ignored
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", Q(72)),
        ("The answer is 5.\n#### 1,000", Q(1000)),
        ("#### -3\nthen 7 more words 9", Q(-3)),
        # the last \boxed{} that holds a number
        (r"So the total is $\boxed{42}$ apples, from 6 bags.", Q(42)),
        (r"First \boxed{5}, corrected: \boxed{7}. Checked 3 times.", Q(7)),
        (r"\boxed{\frac{3}{4}}", Q(3, 4)),
        (r"\boxed{\dfrac{3}{4}} of 12", Q(3, 4)),
        (r"\boxed{x = 5}", Q(5)),
        (r"\boxed{1{,}250}", Q(1250)),
        (r"$\boxed{-\frac{3}{4}}$", Q(-3, 4)),
        (r"\boxed{2\frac{1}{2}}", Q(5, 2)),
        (r"\boxed{25\%}", Q(25)),
        (r"\boxed{\text{yes}} after 7 tries", Q(7)),
        # explicit answer phrases beat later numbers
        ("the answer is 1,250.5 dollars, paid in 3 parts", Q(2501, 2)),
        ("The final answer: $42. I checked it 3 times.", Q(42)),
        ("final answer: $42", Q(42)),
        ("Answer: 3/4 of the pie, that is 6 slices", Q(3, 4)),
        ("**Answer:** **18** apples, from 2 bags", Q(18)),
        ("The answer is approximately 3.14, not 22/7", Q(314, 100)),
        ("So the answer is x = 5, and y is 2", Q(5)),
        ("The answer is 20 - 2 = 18 pens. She gave away 3.", Q(18)),
        ("The answer is 18 since 20 - 2 = 18 and 4 x 2 = 8", Q(18)),
        ("The result is 64 points in 2 games", Q(64)),
        ("Answer = 9 (from 3 rows)", Q(9)),
        # a correction on a later line supersedes the phrase
        ("The answer is 12.\nWait, I made a mistake: 10 + 3 = 13", Q(13)),
        # "= n" closing the last line
        ("3 + 15 = 18 apples", Q(18)),
        ("So he rides 150 - 144 = 6 miles on the 13th day.", Q(6)),
        ("x = -3/4", Q(-3, 4)),
        # not answer phrases: the last number
        ("so she has 7 left", Q(7)),
        ("She ate 5, so she has 7 left for 2 days", Q(2)),
        ("The answer is that she has 7 apples, 3 and 4", Q(4)),
        # thousands separators, and lists that are not one number
        ("It costs 1,000,000 dollars", Q(1_000_000)),
        ("1,250.5", Q(2501, 2)),
        ("Pick 1,2,3", Q(3)),
        ("Pick 1, 2, 3", Q(3)),
        ("about 1{,}000 people", Q(1000)),
        # negatives (a hyphen between digits is subtraction)
        ("The temperature is -5 degrees", Q(-5)),
        ("It fell to −12", Q(-12)),
        ("8-3=5", Q(5)),
        ("She owes -$5", Q(-5)),
        ("She owes $-5", Q(-5)),
        ("She owes -$-5", Q(-5)),
        # decimals, a sentence's full stop
        ("Add .5 cups", Q(1, 2)),
        ("It is 0.25", Q(1, 4)),
        ("The total is 18.", Q(18)),
        ("The total is 18.5.", Q(37, 2)),
        ("About 1.5e3 of them", Q(1500)),
        # fractions
        ("3/4", Q(3, 4)),
        ("3 / 4", Q(3, 4)),
        (r"\frac{3}{4}", Q(3, 4)),
        (r"\dfrac{1}{3}", Q(1, 3)),
        (r"\tfrac12", Q(1, 2)),
        (r"\frac{-3}{4}", Q(-3, 4)),
        ("1.5/3", Q(1, 2)),
        # mixed numbers
        ("1 1/2 cups", Q(3, 2)),
        ("It takes 2 3/4 hours", Q(11, 4)),
        ("-1 1/2", Q(-3, 2)),
        ("1½ cups", Q(3, 2)),
        ("½", Q(1, 2)),
        ("5 6/3", Q(2)),  # not a proper fraction: two numbers, 5 and 2
        # percentages (the value as written; final_answer carries the flag)
        ("25%", Q(25)),
        ("25 percent", Q(25)),
        ("25 per cent of them", Q(25)),
        (r"12.5\%", Q(25, 2)),
        # currency and units
        ("$42", Q(42)),
        ("€12.50", Q(25, 2)),
        ("£3", Q(3)),
        (r"\$7", Q(7)),
        ("12 km", Q(12)),
        ("12km", Q(12)),
        ("5 dollars", Q(5)),
        # markdown
        ("**18**", Q(18)),
        ("She has *18* now", Q(18)),
        # numbers inside words and identifiers are not numbers
        ("x2", None),
        ("step1 and var_2", None),
        ("COVID-19", None),
        ("v1.2.3", None),
        ("x2 = 4", Q(4)),
        ("3/0", None),
        # hostile sizes stay cheap: no 10**999999, no int past the digit limit
        ("1e999999", Q(1)),
        ("9" * 5000 + " 1/2 cups", None),
        ("The answer is " + "that " * 20 + "7", Q(7)),
        ("no number here", None),
        ("", None),
    ],
)
def test_final_number(text: str, expected: Fraction | None) -> None:
    assert final_number(text) == expected


@pytest.mark.parametrize(
    ("text", "value", "percent", "source"),
    [
        ("#### 72", Q(72), False, "gsm8k"),
        (r"\boxed{25\%}", Q(25), True, "boxed"),
        ("The answer is 25%.", Q(25), True, "phrase"),
        ("the answer is 1,250.5 dollars", Q(2501, 2), False, "phrase"),
        ("3 + 15 = 18 apples", Q(18), False, "equals"),
        ("so she has 7 left", Q(7), False, "last"),
        ("25 percent", Q(25), True, "last"),
        ("25 percentile", Q(25), False, "last"),
        ("25", Q(25), False, "last"),
        ("25% of 8 is 2", Q(2), False, "last"),
    ],
)
def test_final_answer_flags_percent_and_names_its_rule(
    text: str, value: Fraction, percent: bool, source: str
) -> None:
    found = final_answer(text)
    assert found == Number(value, percent)
    assert found is not None and found.source == source


def test_final_answer_is_none_without_a_number() -> None:
    assert final_answer("I am not sure, maybe ask the teacher?") is None


@pytest.mark.parametrize(
    ("number", "shown"),
    [
        (Number(Q(18)), "18"),
        (Number(Q(-3, 2)), "-1.5"),
        (Number(Q(1, 4)), "0.25"),
        (Number(Q(1, 3)), "1/3"),
        (Number(Q(25), percent=True), "25%"),
        (Number(Q(1, 1_000_000)), "0.000001"),
    ],
)
def test_number_prints_as_a_person_writes_it(number: Number, shown: str) -> None:
    assert str(number) == shown


# --- numbers_match -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (18, 18, True),
        (Q(18), 18, True),
        (17, 18, False),
        (Number(Q(1, 4)), Q(1, 4), True),
        (Number(Q(18), source="phrase"), Number(Q(18), source="last"), True),
        # exact fractions: 0.75 is 3/4
        (Q(75, 100), Q(3, 4), True),
        # 4+ decimal places: within one unit in the last place (rounded or cut)
        (Q(333333, 10**6), Q(1, 3), True),
        (Q(3333, 10**4), Q(1, 3), True),
        (Q(6666, 10**4), Q(2, 3), True),
        (Q(6667, 10**4), Q(2, 3), True),
        (Q(3333, 10**4), Q(333333, 10**6), True),
        (Q(3335, 10**4), Q(1, 3), False),
        (Q(33, 100), Q(1, 3), False),
        (Q(333, 1000), Q(1, 3), False),
        (Q("0.30000000000000004"), Q(3, 10), True),
        (Q("1234567.0000001"), Q(1234567), True),
        # integers only ever exactly
        (1_000_000, 1_000_001, False),
        # percent on one side: value/100, or the bare value (GSM8K writes 25 for 25%)
        (Number(Q(25), percent=True), Q(1, 4), True),
        (Q(1, 4), Number(Q(25), percent=True), True),
        (Number(Q(25), percent=True), 25, True),
        (Number(Q(25), percent=True), 4, False),
        (Number(Q(333333, 10**4), percent=True), Q(1, 3), True),
        # percent on both sides compares the numbers
        (Number(Q(25), percent=True), Number(Q(25), percent=True), True),
        (Number(Q(25), percent=True), Number(Q(1, 4), percent=True), False),
        (Q(1, 4), 25, False),
        (None, 5, False),
        (5, None, False),
    ],
)
def test_numbers_match(
    a: Number | Fraction | int | None, b: Number | Fraction | int | None, expected: bool
) -> None:
    assert numbers_match(a, b) is expected


# --- math_fidelity -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("final", "reference", "expected"),
    [
        (
            "So she has 18 apples in total.",
            "She has 20 - 2 = <<20-2=18>>18 apples.\n#### 18",
            (True, "final answer 18 matches reference"),
        ),
        ("The answer is 17.", "#### 18", (False, "final answer 17 != reference 18")),
        ("I am not sure what to do.", "#### 18", (False, "no number in the final turn")),
        ("It is 18.", "Paris is the capital of France.", (None, "reference has no number")),
        ("That is 25% of the class.", "#### 25", (True, "final answer 25% matches reference 25")),
        ("0.25 of them", "25%", (True, "final answer 0.25 matches reference 25%")),
        ("x = 0.3333", r"\frac{1}{3}", (True, "final answer 0.3333 matches reference 1/3")),
        (r"$\boxed{1,250.5}$", "#### 1250", (False, "final answer 1250.5 != reference 1250")),
        ("The answer is 3/4.", "0.75", (True, "final answer 0.75 matches reference")),
        ("The answer is 1/3.", "0.75", (False, "final answer 1/3 != reference 0.75")),
    ],
)
def test_math_fidelity(final: str, reference: str, expected: tuple[bool | None, str]) -> None:
    assert math_fidelity(final, reference) == expected


# --- real GSM8K references -----------------------------------------------------------------


def test_gsm8k_references_give_the_number_after_the_hashes() -> None:
    rows = _gsm8k_rows(200)
    assert len(rows) == 200
    wrong = [
        (r["answer"][-60:], final_number(r["answer"]))
        for r in rows
        if final_number(r["answer"]) != _gsm8k_value(r["answer"])
    ]
    assert wrong == []
    assert final_number(rows[0]["answer"]) == 72  # Natalia's clips


def test_gsm8k_worked_solutions_without_the_hashes_still_end_on_the_answer() -> None:
    """The fallback rules alone (no "####"): the last "= n" or number is the answer in 196
    of the first 200; the misses are "20 = A" algebra, answers in cents and a unit change."""
    rows = _gsm8k_rows(200)
    misses = [
        r["answer"][-80:]
        for r in rows
        if final_number(r["answer"].rsplit("####", 1)[0]) != _gsm8k_value(r["answer"])
    ]
    assert len(misses) <= 4, misses


def test_gsm8k_student_answers_are_held_to_the_reference() -> None:
    for row in _gsm8k_rows(50):
        n = _gsm8k_value(row["answer"])
        right = f"Let me add it up. So the answer is **{n}**."
        wrong = f"Let me add it up. So the answer is **{n + 1}**."
        assert math_fidelity(right, row["answer"])[0] is True
        assert math_fidelity(wrong, row["answer"]) == (
            False,
            f"final answer {n + 1} != reference {n}",
        )


# --- code_blocks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no fences, just `inline` code", []),
        (f"Here:\n{F}python\nx = 1\n{F}\nDone.", [("python", "x = 1")]),
        (f"{F}Python3\nx=1\ny=2\n{F}", [("python3", "x=1\ny=2")]),
        (f"{F}\nplain\n{F}", [("", "plain")]),
        (f'{F}python title="a.py"\nx\n{F}', [("python", "x")]),
        (f"{F}py\na\n{F}\ntext\n{F}sql\nSELECT 1;\n{F}", [("py", "a"), ("sql", "SELECT 1;")]),
        ("~~~js\nlet a = 1;\n~~~", [("js", "let a = 1;")]),
        (f"{F}py\nprint(1)", [("py", "print(1)")]),  # cut off mid-block
        (f"  {F}python\n  def f():\n      return 1\n  {F}", [("python", "def f():\n    return 1")]),
        (f"`{F}md\n{F}py\nx\n{F}\n`{F}", [("md", f"{F}py\nx\n{F}")]),
        (f"use {F}x{F} inline", []),
    ],
)
def test_code_blocks(text: str, expected: list[tuple[str, str]]) -> None:
    assert code_blocks(text) == expected


# --- looks_like_code -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"{F}\nanything\n{F}",
        "def f(x):\n    return x * 2",
        "for(let i = 0; i < n; i++) {\n  console.log(i);\n}",
        "SELECT Name FROM Employees WHERE Department = 'Accounting';",
        "SELECT name\nFROM customers\nWHERE id = 10",
        "print('hello')",
        "import os\nprint(os.getcwd())",
        "#include <stdio.h>\nint main() {\n  return 0;\n}",
        "ans = a + b\nprint(ans)  # 10",
        "newlist = [x * x for x in xs]",
        "<nav>\n  <a href='/'>Home</a>\n</nav>",
        "Use a list:\n\nmy_list = [1, 2, 3]\nprint(len(my_list))",
    ],
)
def test_looks_like_code(text: str) -> None:
    assert looks_like_code(text) is True


@pytest.mark.parametrize(
    "text",
    [
        "",
        "42",
        "x = 5",
        "The distinct values from the given list are 3, 5, 7 and 9.",
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether.",
        "Return the list sorted in reverse order.\nFor example: the list is reversed.",
        "for example:\nIf you want, try again.",
        "A while loop runs until a condition is met; a for loop runs over a sequence.\nSee above.",
        "Paris (France)",
    ],
)
def test_prose_does_not_look_like_code(text: str) -> None:
    assert looks_like_code(text) is False


# --- code_fidelity -------------------------------------------------------------------------

DEF_REF = "def double(x):\n    return x * 2"


@pytest.mark.parametrize(
    ("final", "reference", "expected"),
    [
        (f"Here:\n{F}python\n{DEF_REF}\n{F}", DEF_REF, (True, "1 python block parses")),
        (
            f"{F}python\ndef double(x)\n    return x * 2\n{F}",
            DEF_REF,
            (False, "code block 1 (python) does not parse: expected ':' (line 1)"),
        ),
        (
            f"{F}py\nprint('a')\n{F}\nand\n{F}py\nprint('b'\n{F}",
            DEF_REF,
            (False, "code block 2 (py) does not parse: '(' was never closed (line 1)"),
        ),
        (
            f"{F}\nfor i in range(3):\nprint(i)\n{F}",
            "prose",
            (
                False,
                "code block 1 (untagged) does not parse: expected an indented block after "
                "'for' statement on line 1 (line 2)",
            ),
        ),
        (
            f"{F}python\nprint(1)\n{F}\n{F}python3\nprint(2)\n{F}",
            DEF_REF,
            (True, "2 python blocks parse"),
        ),
        # another language, tagged or obvious, is not parsed as Python
        (f"{F}js\nfunction f() {{ return 1; }}\n{F}", "prose", (None, "no python block to check")),
        (
            f"{F}\nint main() {{\n  return 0;\n}}\n{F}",
            DEF_REF,
            (True, "reference is code and the final turn has code"),
        ),
        (f"{F}\ndef f(a)\n  a + 1\nend\n{F}", "prose", (None, "no python block to check")),
        (f"{F}\nresult = function(3)\n{F}", "prose", (True, "1 python block parses")),
        # REPL transcripts and notebook magics are Python
        (f"{F}pycon\n>>> x = 1\n>>> x + 1\n2\n{F}", "prose", (True, "1 python block parses")),
        (
            f"{F}python\n%matplotlib inline\nimport os\n!pip install x\n{F}",
            "prose",
            (True, "1 python block parses"),
        ),
        # a code reference owes code
        (
            "I would just double it.",
            DEF_REF,
            (False, "reference is code but the final turn has none"),
        ),
        (
            "def double(x):\n    return x + x",
            DEF_REF,
            (True, "reference is code and the final turn has code"),
        ),
        (
            "SELECT 1;",
            "SELECT Name FROM Employees;",
            (True, "reference is code and the final turn has code"),
        ),
        # nothing to check
        ("The capital is Paris.", "Paris", (None, "not code")),
        (f"{F}\nHello, World!\n{F}", "prose", (None, "no python block to check")),
    ],
)
def test_code_fidelity(final: str, reference: str, expected: tuple[bool | None, str]) -> None:
    assert code_fidelity(final, reference) == expected


def test_code_alpaca_python_references_parse_and_look_like_code() -> None:
    if not CODE_ALPACA.is_file():
        pytest.skip(f"no Code Alpaca data at {CODE_ALPACA}")
    rows = json.loads(CODE_ALPACA.read_text(encoding="utf-8"))
    defs = [r["output"] for r in rows if r["output"].startswith("def ")][:100]
    assert len(defs) == 100
    assert all(looks_like_code(d) for d in defs)
    # Code Alpaca has Ruby "def ... end" and broken indentation among them: those must fail
    verdicts = [code_fidelity(f"{F}python\n{d}\n{F}", d)[0] for d in defs]
    assert verdicts == [_parses(d) for d in defs]
    assert 75 <= verdicts.count(True) < 100
    prose = [
        r["output"] for r in rows if r["output"].startswith("The ") and "\n" not in r["output"]
    ]
    assert len(prose) > 40
    assert not any(looks_like_code(p) for p in prose)
