"""Seed loading: local files into Seed records, bad rows into rejects with their line.

Pure functions (no Prefect) so they are tested directly. A missing file is a SeedSourceError
(one line naming the file); a bad row never stops the run, it becomes a Reject.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.config import PROJECT_ROOT, SeedsConfig, SourceConfig
from flows.records import Reject, Seed

_GSM8K_FINAL = re.compile(r"^####\s*(.+?)\s*$", re.MULTILINE)


class SeedSourceError(Exception):
    """A source that cannot be read at all (missing file, wrong shape): one line, no traceback."""


@dataclass
class LoadResult:
    seeds: list[Seed] = field(default_factory=list)
    pool: list[Seed] = field(default_factory=list)  # every valid seed, before sampling
    rejects: list[Reject] = field(default_factory=list)
    loaded: int = 0


def resolve_path(path: str) -> Path:
    """Relative to the working directory first, then to the project root (bundled data)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    bundled = PROJECT_ROOT / p
    return bundled if bundled.exists() else p


def _iter_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, parsed row); a row that cannot be parsed is yielded as an exception."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SeedSourceError(f"{path}: not a valid JSON file ({exc})") from None
        if not isinstance(data, list):
            raise SeedSourceError(f"{path}: expected a JSON array of objects")
        for i, row in enumerate(data):
            yield f"{path.name}[{i}]", row
        return
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            loc = f"{path.name}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                yield loc, ValueError("invalid UTF-8")
                continue
            if not line.strip():
                continue
            try:
                yield loc, json.loads(line)
            except json.JSONDecodeError as exc:
                yield loc, ValueError(f"malformed JSON ({exc.msg})")


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} is {type(value).__name__}, expected text")
    return value


def map_row(row: Any, source: SourceConfig) -> tuple[str, str, dict[str, Any]]:
    """Map one parsed row onto (question, reference, meta) according to the source's format."""
    if not isinstance(row, dict):
        raise ValueError(f"row is {type(row).__name__}, expected an object")
    meta: dict[str, Any] = {}
    if source.format == "question_answer":
        question, reference = _text(row, "question"), _text(row, "answer")
        final = _GSM8K_FINAL.findall(reference)
        if final:
            meta["final_answer"] = final[-1].replace(",", "")
    elif source.format == "alpaca":
        instruction, extra = _text(row, "instruction"), _text(row, "input")
        question = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction
        reference = _text(row, "output")
    else:  # self_instruct
        instances = row.get("instances") or [{}]
        if not isinstance(instances, list) or not isinstance(instances[0], dict):
            raise ValueError("field 'instances' must be a list of {input, output} objects")
        first = instances[0]
        instruction, extra = _text(row, "instruction"), _text(first, "input")
        question = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction
        reference = _text(first, "output")
    if not question.strip():
        raise ValueError("empty question")
    if not reference.strip():
        raise ValueError("empty reference")
    return question, reference, meta


def load_source(source: SourceConfig, max_chars: int) -> LoadResult:
    path = resolve_path(source.path)
    if not path.is_file():
        raise SeedSourceError(f"{source.path}: seed file not found")
    result = LoadResult()
    for loc, row in _iter_rows(path):
        result.loaded += 1
        try:
            if isinstance(row, Exception):
                raise row
            question, reference, meta = map_row(row, source)
            if len(question) > max_chars or len(reference) > max_chars:
                raise ValueError(f"row longer than {max_chars} characters")
        except ValueError as exc:
            result.rejects.append(
                Reject(stage="load", reason=str(exc), source=source.label, location=loc)
            )
            continue
        meta["location"] = loc
        result.seeds.append(Seed.create(source.label, source.domain, question, reference, meta))
    return result


def _quota(cfg: SeedsConfig, index: int) -> int | None:
    source = cfg.sources[index]
    if source.sample is not None:
        return source.sample
    if cfg.sample is None:
        return None
    per, extra = divmod(cfg.sample, len(cfg.sources))
    return per + (1 if index < extra else 0)


def load_seeds(cfg: SeedsConfig, override_paths: list[str] | None = None) -> LoadResult:
    """Load every source, then sample reproducibly (same config, same seeds, any machine)."""
    sources = list(cfg.sources)
    if override_paths:
        by_stem = {Path(s.path).name: s for s in cfg.sources}
        sources = []
        for p in override_paths:
            known = by_stem.get(Path(p).name)
            sources.append(
                known.model_copy(update={"path": p})
                if known
                else SourceConfig(path=p, domain="general", name=Path(p).stem)
            )
        cfg = cfg.model_copy(update={"sources": sources})
    total = LoadResult()
    for i, source in enumerate(sources):
        part = load_source(source, cfg.max_chars)
        total.loaded += part.loaded
        total.rejects.extend(part.rejects)
        total.pool.extend(part.seeds)
        quota = _quota(cfg, i)
        chosen = part.seeds
        if quota is not None and quota < len(chosen):
            rng = random.Random(f"{cfg.random_seed}:{source.label}")
            keep = sorted(rng.sample(range(len(chosen)), quota))
            chosen = [chosen[k] for k in keep]
        total.seeds.extend(chosen)
    return total
