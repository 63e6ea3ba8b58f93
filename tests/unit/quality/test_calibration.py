"""Agreement with a person's labels: precision, recall and Cohen's kappa per check, for the
judge against every defect, and the filter as configured."""

from __future__ import annotations

import pytest

from flows.quality.calibration import (
    Agreement,
    Judged,
    agreement,
    calibrate,
    calibration_table,
    parse_label,
)


def checks(**failed: bool | None) -> dict[str, dict]:
    """Every named check with its ok (True passes, False fails, None does not apply)."""
    return {name: {"ok": ok, "reason": ""} for name, ok in failed.items()}


def test_kappa_precision_and_recall_of_a_known_confusion_matrix() -> None:
    # 20 rows: 5 true alarms, 2 false, 3 misses, 10 agreed clean
    a = Agreement(tp=5, fp=2, fn=3, tn=10)
    assert a.precision() == pytest.approx(5 / 7) and a.recall() == pytest.approx(5 / 8)
    chance = (7 * 8 + 13 * 12) / 400  # both flag, plus both pass, by their own rates
    assert a.kappa() == pytest.approx((15 / 20 - chance) / (1 - chance))
    assert Agreement(tp=4, tn=6).kappa() == 1.0
    assert Agreement(fp=4, fn=6).kappa() == pytest.approx(-0.48 / 0.52)  # chance: 0.48
    assert agreement([(True, True), (True, False), (False, True), (False, False)]) == Agreement(
        1, 1, 1, 1
    )


def test_undefined_figures_are_none_not_zero() -> None:
    clean = Agreement(tn=5)  # nothing flagged, nothing defective
    assert (clean.precision(), clean.recall(), clean.kappa()) == (None, None, None)
    assert Agreement().kappa() is None
    assert Agreement(fn=2, tn=3).precision() is None  # never flagged
    assert Agreement(fp=2, tn=3).recall() is None  # no defect to find


def test_each_check_meets_the_labels_of_its_kind_and_the_judge_every_defect() -> None:
    rows = [
        # the echo check catches the echo; the judge misses it
        Judged("echoed", checks(echo=False, fidelity=True, judge=True), accepted=False),
        # the judge catches a reasoning error no check sees
        Judged("slip", checks(echo=True, fidelity=True, judge=False), accepted=True),
        # a clean dialogue the judge wrongly fails
        Judged("clean", checks(echo=True, fidelity=True, judge=False), accepted=True),
        # fidelity does not apply (general): left out of fidelity's figures
        Judged("essay", checks(echo=True, fidelity=None, judge=True), accepted=True),
        Judged("unlabelled", checks(echo=False, fidelity=False, judge=False), accepted=False),
    ]
    labels = {
        "echoed": frozenset({"echo"}),
        "slip": frozenset({"procedural_errors"}),
        "clean": frozenset(),
        "essay": frozenset(),
        "gone": frozenset(),  # no such row
    }
    got = calibrate(rows, labels)
    assert got["labelled"] == 4 and got["unmatched"] == 1 and got["unmatched_ids"] == ["gone"]
    table = got["agreement"]
    assert (table["echo"]["tp"], table["echo"]["fp"], table["echo"]["tn"]) == (1, 0, 3)
    assert table["echo"]["kappa"] == 1.0
    assert table["fidelity"]["rows"] == 3 and table["fidelity"]["flagged"] == 0
    judge = table["judge"]
    assert (judge["tp"], judge["fp"], judge["fn"], judge["tn"]) == (1, 1, 1, 1)
    assert judge["precision"] == judge["recall"] == 0.5 and judge["kappa"] == 0.0
    structure = table["structure"]  # the group: the echo label is one of its kinds
    assert structure["defects"] == 1 and structure["tp"] == 1
    flt = table["filter"]  # the hard checks as configured: dropped only the echo
    assert (flt["tp"], flt["fp"], flt["fn"], flt["tn"]) == (1, 0, 1, 2)
    assert "role_leakage" not in table  # never applied in these rows
    assert list(table)[-2:] == ["judge", "filter"]


def test_a_label_of_a_group_counts_for_the_group_not_for_one_of_its_checks() -> None:
    rows = [Judged("a", checks(echo=False, truncated=True), accepted=False)]
    got = calibrate(rows, {"a": frozenset({"structure"})})["agreement"]
    assert got["structure"]["tp"] == 1
    assert got["echo"]["fp"] == 1  # the labeller did not say it was the echo


def test_the_table_prints_a_dash_where_a_figure_is_undefined() -> None:
    rows = [Judged("a", checks(echo=True, judge=True), accepted=True)]
    lines = calibration_table(calibrate(rows, {"a": frozenset()}))
    assert lines[0].split() == ["check", "rows", "defects", "flagged", "precision", "recall",
                                "kappa"]  # fmt: skip
    assert lines[1].split() == ["echo", "1", "0", "0", "-", "-", "-"]


@pytest.mark.parametrize(
    "value,kinds",
    [
        ("ok", set()),
        ("echo", {"echo"}),
        (["fidelity", "procedural_errors"], {"fidelity", "procedural_errors"}),
        ("structure", {"structure"}),
    ],
)
def test_labels_are_ok_a_kind_or_kinds(value: object, kinds: set[str]) -> None:
    assert parse_label(value) == kinds


@pytest.mark.parametrize(
    "value,message",
    [
        ("judge", "unknown defect kind 'judge' (known: ok, fidelity, empty"),
        ("wrong", "unknown defect kind 'wrong'"),
        ([], "label must be 'ok', a defect kind or a list of kinds"),
        (3, "got 3"),
    ],
)
def test_a_bad_label_says_what_is_allowed(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_label(value)
