"""`master verify --in FILE`: the run's checks over any ShareGPT dataset, ours or someone else's.

References come from a field of each row, or from a seeds file joined on `seed_id` (or, failing
that, on the question text). Rows that cannot be read or matched are listed with their
location and reason; the others get a verdict per check, written to verdicts.parquet. With
`--labels FILE` (a person's verdicts), the checks' and the judge's agreement with the labels
is measured (flows/quality/calibration.py) and written to verify_summary.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from flows.core.config import CHECKS, SCENARIOS, MasterConfig
from flows.core.formats import from_sharegpt
from flows.core.records import Reject, normalise_text
from flows.ingest.seeds import resolve_path
from flows.ingest.sources import SeedSourceError, read_file
from flows.quality.calibration import Judged, Label, calibrate, calibration_table, parse_label
from flows.quality.checks import pass_rates
from flows.quality.verification import Item, Verified, verify_items


@dataclass
class References:
    by_id: dict[str, dict[str, str]] = field(default_factory=dict)
    by_question: dict[str, dict[str, str]] = field(default_factory=dict)


def read_references(path: Path, max_row_bytes: int) -> References:
    """question/reference/domain by seed id and by normalised question, from a seeds file
    (our seeds.parquet, or any rows with id or seed_id, question, and reference or answer)."""
    refs = References()
    for _, row in read_file(path, max_row_bytes):
        reference = row.get("reference", row.get("answer"))
        question = row.get("question")
        if not isinstance(reference, str) or not isinstance(question, str):
            continue
        entry = {"question": question, "reference": reference, "domain": row.get("domain") or ""}
        key = row.get("id", row.get("seed_id"))
        if isinstance(key, str):
            refs.by_id[key] = entry
        refs.by_question[normalise_text(question).lower()] = entry
    return refs


def read_labels(path: Path) -> dict[str, Label]:
    """A labels file: JSON Lines of {"id": ..., "label": "ok" | KIND | [KIND, ...]} (`seed_id`
    may stand for `id`). A mistake is one line naming the file, the line and what is wrong."""
    if not path.is_file():
        raise SeedSourceError(f"{path}: labels file not found")
    labels: dict[str, Label] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise SeedSourceError(f"{path}: not UTF-8 text") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SeedSourceError(f"{where}: not JSON ({exc.msg})") from None
        key = entry.get("id", entry.get("seed_id")) if isinstance(entry, dict) else None
        if not isinstance(key, str) or not key or "label" not in entry:
            raise SeedSourceError(f'{where}: expected {{"id": ..., "label": ...}}')
        if key in labels:
            raise SeedSourceError(f"{where}: id {key!r} is labelled twice")
        try:
            labels[key] = parse_label(entry["label"])
        except ValueError as exc:
            raise SeedSourceError(f"{where}: {exc}") from None
    if not labels:
        raise SeedSourceError(f"{path}: no labels")
    return labels


def _label_text(label: Label | None) -> str | None:
    return None if label is None else ",".join(sorted(label)) or "ok"


def _conversation(row: dict[str, Any]) -> list[dict[str, str]] | None:
    conv = row.get("conversations")
    if not isinstance(conv, list) or not conv:
        return None
    if not all(isinstance(m, dict) and isinstance(m.get("value"), str) for m in conv):
        return None
    if not all(m.get("from") in ("system", "human", "gpt") for m in conv):
        return None
    return conv


def read_items(
    path: Path,
    reference_field: str,
    refs: References | None,
    default_domain: str,
    max_row_bytes: int,
) -> tuple[list[Item], list[str], list[Reject]]:
    """The verifiable rows as Items (with their locations), and the rows that are not."""
    items, where, rejects = [], [], []
    for index, (location, row) in enumerate(read_file(path, max_row_bytes)):
        conv = _conversation(row) if isinstance(row, dict) else None

        def reject(reason: str, row: Any = row, location: str = location) -> None:
            seed = row.get("seed_id") if isinstance(row, dict) else None
            rejects.append(
                Reject(stage="verify-input", reason=reason, location=location, seed_id=seed)
            )

        if conv is None:
            reject("no `conversations` list of {from: system|human|gpt, value: text} turns")
            continue
        first_human = next((m["value"] for m in conv if m["from"] == "human"), "")
        entry = None
        if refs is not None:
            entry = refs.by_id.get(str(row.get("seed_id"))) or refs.by_question.get(
                normalise_text(str(row.get("question") or first_human)).lower()
            )
        reference = row.get(reference_field)
        if not isinstance(reference, str) or not reference.strip():
            reference = entry["reference"] if entry else None
        if not reference:
            reject(f"no reference: field `{reference_field}` missing and no seed matched")
            continue
        scenario = row.get("scenario") if row.get("scenario") in SCENARIOS else None
        hint = row.get("question") or (entry["question"] if entry else None)
        turns = from_sharegpt(conv, scenario, hint)
        asked = turns[0]["text"] if turns and turns[0]["speaker"] == "question" else first_human
        question = hint or asked
        domain = row.get("domain") or (entry["domain"] if entry else "") or default_domain
        if domain not in ("math", "code", "general"):
            reject(f"unknown domain {domain!r} (math, code or general)")
            continue
        items.append(
            Item(
                key=str(row.get("seed_id") or f"row{index}"),
                turns=turns,
                scenario=scenario,
                domain=domain,
                question=question,
                reference=reference,
            )
        )
        where.append(location)
    return items, where, rejects


def verdict_rows(
    items: list[Item],
    where: list[str],
    results: list[Verified],
    labels: dict[str, Label] | None = None,
) -> pl.DataFrame:
    """One row per verified dialogue: overall verdict (and its label, when labelled), then
    each check's ok and reason."""
    rows = []
    for item, location, result in zip(items, where, results, strict=True):
        row: dict[str, Any] = {
            "location": location,
            "seed_id": item.key,
            "scenario": item.scenario,
            "domain": item.domain,
            "label": _label_text((labels or {}).get(item.key)),
            "accepted": result.accepted,
            "failed": ",".join(result.failed),
            "reason": result.reason(),
            "judge_score": result.judge_score,
        }
        for name in CHECKS:
            check = result.checks.get(name, {"ok": None, "reason": ""})
            row[f"{name}_ok"] = check["ok"]
            row[f"{name}_reason"] = check["reason"]
        rows.append(row)
    schema: dict[str, Any] = {
        "location": pl.String,
        "seed_id": pl.String,
        "scenario": pl.String,
        "domain": pl.String,
        "label": pl.String,
        "accepted": pl.Boolean,
        "failed": pl.String,
        "reason": pl.String,
        "judge_score": pl.Int64,
    }
    for name in CHECKS:
        schema[f"{name}_ok"] = pl.Boolean
        schema[f"{name}_reason"] = pl.String
    return pl.DataFrame(rows, schema=schema)


def audit_summary(results: list[Verified], rejects: list[Reject]) -> dict[str, Any]:
    failed = [name for r in results for name in r.failed]
    return {
        "rows": len(results) + len(rejects),
        "verified": len(results),
        "unreadable": len(rejects),
        "accepted": sum(1 for r in results if r.accepted),
        "rejected": sum(1 for r in results if not r.accepted),
        "by_check": {name: failed.count(name) for name in CHECKS if name in failed},
        "pass_rates": pass_rates(r.checks for r in results),
    }


def run_audit(
    cfg: MasterConfig,
    source: str,
    out: Path,
    reference_field: str = "reference",
    seeds: str | None = None,
    domain: str = "general",
    judge: bool = True,
    labels: str | None = None,
) -> dict[str, Any]:
    """Verify a dataset file; write verdicts.parquet, rejects.parquet and verify_summary.json
    (with `calibration`, the agreement with a labels file, when one is given)."""
    from flows.core.files import atomic_path, write_json
    from flows.publish.accounting import lm_block
    from flows.publish.writers import write_rejects
    from flows.runs.shards import open_judge

    path = resolve_path(source)
    if not path.is_file():
        raise SeedSourceError(f"{source}: file not found")
    labelled = read_labels(resolve_path(labels)) if labels else None
    refs = read_references(resolve_path(seeds), cfg.seeds.max_row_bytes) if seeds else None
    items, where, rejects = read_items(path, reference_field, refs, domain, cfg.seeds.max_row_bytes)
    q = cfg.quality.model_copy(update={"judge": judge})
    store = None
    judge_module = None
    if judge and cfg.quality.judge:
        from modules.lm.call_cache import CallStore

        store = CallStore(cfg.cache.dir) if cfg.cache.enabled else None
        judge_module = open_judge(cfg, store)
    try:
        results = verify_items(items, q, judge_module, cfg.run.concurrency)
    finally:
        if store is not None:
            store.close()
    summary = audit_summary(results, rejects)
    summary["lm"] = lm_block([c for r in results for c in r.calls], cfg.lms)
    summary["input"] = str(source)
    if labelled is not None:
        judged = [Judged(i.key, r.checks, r.accepted) for i, r in zip(items, results, strict=True)]
        summary["calibration"] = {"labels": str(labels), **calibrate(judged, labelled)}
    with atomic_path(out / "verdicts.parquet") as tmp:
        verdict_rows(items, where, results, labelled).write_parquet(tmp)
    write_rejects(out, rejects)
    write_json(out / "verify_summary.json", summary)
    return summary


def format_audit(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['verified']} dialogues verified ({summary['unreadable']} rows unreadable): "
        f"{summary['accepted']} pass, {summary['rejected']} fail",
        f"{'check':<16}{'pass rate':>10}{'failed (hard)':>15}",
    ]
    for name, rate in summary["pass_rates"].items():
        lines.append(f"{name:<16}{rate:>10.1%}{summary['by_check'].get(name, 0):>15}")
    calibration = summary.get("calibration")
    if calibration is not None:
        unmatched = calibration["unmatched"]
        lines += [
            "",
            f"agreement with {calibration['labels']}: {calibration['labelled']} labelled "
            f"dialogues" + (f" ({unmatched} labels matched no row)" if unmatched else ""),
            *calibration_table(calibration),
        ]
    return "\n".join(lines)
