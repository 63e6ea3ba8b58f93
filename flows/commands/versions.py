"""`master versions DIR` and `master diff DIR [A] [B]`: an output folder's versions, read from
their files (flows/publish/versions.py), and what changed between two of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.publish.changes import KINDS, changes_block, diff_files
from flows.publish.gates import accepted_share
from flows.publish.report import markdown_table
from flows.publish.versions import CURRENT, OutputFolder, Version


class VersionsError(Exception):
    """A folder with no versions, or a version that is not there: one line."""


def _folder(root: Path) -> OutputFolder:
    folder = OutputFolder(root)
    if not root.is_dir():
        raise VersionsError(f"{root}: no such folder")
    if not folder.versions() and not folder.attempts():
        raise VersionsError(
            f"{root}: no versions here (an output folder of `master run` has {CURRENT} and "
            "versions/; a folder written before versions existed is adopted by its next run)"
        )
    return folder


def _entry(version: Version, current: Version | None) -> dict[str, Any]:
    s = version.summary
    share = accepted_share(s) if s else None
    gates = s.get("gates") or {}
    return {
        "id": version.id,
        "current": current is not None and version.path == current.path,
        "published": version.published,
        "rows": (s.get("rows") or {}).get("published"),
        "accepted_share": None if share is None else round(share, 4),
        "config_hash": s.get("config_hash"),
        "gates": (
            "passed"
            if gates.get("passed")
            else "forced"
            if gates.get("forced")
            else "failed"
            if gates
            else "unchecked"
        ),  # fmt: skip
        "failed": gates.get("failed", []),
        "previous_version": s.get("previous_version"),
    }


def list_versions(root: Path) -> list[dict[str, Any]]:
    """Every version, oldest first, then the attempts that failed their gates."""
    folder = _folder(root)
    current = folder.current()
    return [_entry(v, current) for v in [*folder.versions(), *folder.attempts()]]


def format_versions(listed: list[dict[str, Any]]) -> str:
    def share(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1%}"

    rows = [
        [("* " if e["current"] else "  ") + e["id"], "published" if e["published"] else
         "attempt", e["rows"], share(e["accepted_share"]), e["config_hash"],
         e["gates"] + (f": {'; '.join(e['failed'])}" if e["failed"] else "")]
        for e in listed
    ]  # fmt: skip
    return (
        markdown_table(["version", "kind", "rows", "accepted", "config", "gates"], rows)
        + "\n* the published version (DIR/current)"
    )


def diff_versions(root: Path, a: str | None = None, b: str | None = None) -> dict[str, Any]:
    """The changes from version A to version B (B: the published one; A: the one before B),
    with every seed id."""
    folder = _folder(root)
    try:
        newer = folder.find(b) if b else folder.current()
        if newer is None:
            raise LookupError(f"{root}: no published version; name two versions")
        if a:
            older: Version | None = folder.find(a)
        else:
            earlier = [v for v in folder.versions() if v.id < newer.id]
            older = earlier[-1] if earlier else None
    except LookupError as exc:
        raise VersionsError(str(exc)) from None
    kinds = diff_files(older.path / "dataset.parquet" if older else None,
                       newer.path / "dataset.parquet")  # fmt: skip
    block = changes_block(
        older.id if older else None, kinds, older.summary if older else None, newer.summary
    )
    block["seed_ids"] = {k: [s for s, _ in kinds[k]] for k in KINDS if k != "unchanged"}
    return {"from": older.id if older else None, "to": newer.id, **block}


def format_diff(result: dict[str, Any], ids: int = 20) -> str:
    from flows.publish.changes import changes_markdown

    head = f"{result['from'] or '(nothing)'} -> {result['to']}"
    lines = [head, "", changes_markdown(result).split("\n", 2)[2]]
    for kind, seeds in result["seed_ids"].items():
        if seeds:
            more = f" (+{len(seeds) - ids} more)" if len(seeds) > ids else ""
            lines.append(f"{kind}: {', '.join(seeds[:ids])}{more}")
    return "\n".join(lines)
