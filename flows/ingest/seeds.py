"""Seed ingestion: sources -> normalised, unique, uncontaminated, sampled seeds.

Streamed in one pass per source with bounded memory: every row is read and mapped, bad rows
become rejects with their location, exact duplicates are caught against every earlier row
(a 16-byte digest each), and a reservoir keeps a uniform sample of `sample x oversample`
candidates. Near-duplicate detection and decontamination then run on those candidates
(never on the whole stream), and each source is cut to its quota from the survivors. The
same config gives the same seeds, in the same order, on any machine.

Pure functions: no Prefect, tested directly.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.core.config import PROJECT_ROOT, DataRef, SeedsConfig, SourceConfig
from flows.core.records import Reject, Seed, seed_id
from flows.ingest.decontaminate import ContaminationIndex
from flows.ingest.dedupe import TELL_EVERY, canonical, digest, near_duplicates
from flows.ingest.field_mapping import Skip, field_names, map_row, missing_columns
from flows.ingest.sources import Row, SeedSourceError, read_file, read_hub

__all__ = ["LoadResult", "SeedSourceError", "load_more", "load_seeds", "quotas", "resolve_path"]

log = logging.getLogger("master")


@dataclass
class LoadResult:
    seeds: list[Seed] = field(default_factory=list)
    pool: list[Seed] = field(default_factory=list)  # retrieval pool (capped), decontaminated
    rejects: list[Reject] = field(default_factory=list)
    loaded: int = 0
    rejected: int = 0  # rows that could not become seeds (bad, or skipped shapes)
    skipped: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    contaminated: int = 0
    exhausted: list[str] = field(default_factory=list)  # sources with no seed left (backfill)
    earlier: list[Seed] = field(default_factory=list)  # seeds planned before (backfill rounds)
    backfill: dict[str, Any] = field(default_factory=dict)  # what merge.backfill added

    def counts(self) -> dict[str, int]:
        """The `seeds` block of summary.json."""
        return {
            "loaded": self.loaded,
            "rejected": self.rejected,
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates,
            "contaminated": self.contaminated,
            "kept": len(self.seeds),
            "skipped": self.skipped,
        }


@dataclass(order=True)
class _Candidate:
    """A mapped row before it becomes a Seed; cheap to hold in a reservoir."""

    order: tuple[int, int]  # (source index, row number in the stream)
    id: str = field(compare=False)
    question: str = field(compare=False)
    reference: str = field(compare=False)
    meta: dict[str, Any] = field(compare=False)
    location: str = field(compare=False)
    canon: str = field(compare=False)  # canonical question, for dedupe


class _Reservoir:
    """Algorithm R: a uniform sample of k items from a stream of unknown length."""

    def __init__(self, k: int | None, rng: random.Random) -> None:
        self.k, self.rng, self.items, self.seen = k, rng, [], 0

    def add(self, item: _Candidate) -> None:
        self.seen += 1
        if self.k is None or len(self.items) < self.k:
            self.items.append(item)
            return
        j = self.rng.randrange(self.seen)
        if j < self.k:
            self.items[j] = item


def resolve_path(path: str) -> Path:
    """Relative to the working directory first, then to the project root (bundled data)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    bundled = PROJECT_ROOT / p
    return bundled if bundled.exists() else p


def _rows(ref: DataRef, max_row_bytes: int) -> Iterator[tuple[str, Row]]:
    if ref.hf is not None:
        return read_hub(ref.hf, ref.hf_config, ref.split, max_row_bytes)
    return read_file(resolve_path(str(ref.path)), max_row_bytes)


def _where(ref: DataRef) -> str:
    return f"hf:{ref.hf}" if ref.hf else str(ref.path)


def iter_mapped(
    ref: DataRef, max_row_bytes: int, max_chars: int
) -> Iterator[tuple[str, tuple[str, str, dict[str, Any]] | ValueError]]:
    """Every row of a source as (location, (question, reference, meta)) or the reason it fails."""
    names = field_names(ref.format, ref.fields)
    checked = False
    for loc, row in _rows(ref, max_row_bytes):
        if isinstance(row, ValueError):
            yield loc, row
            continue
        if not checked:
            missing = missing_columns(ref.format, names, set(row))
            if missing:
                raise SeedSourceError(
                    f"{_where(ref)}: field {missing[0]!r} not found "
                    f"(the rows have: {', '.join(sorted(map(str, row))) or 'nothing'}); "
                    "set the source's `fields` mapping"
                )
            checked = True
        try:
            question, reference, meta = map_row(row, ref.format, names)
        except ValueError as exc:
            yield loc, exc
            continue
        if len(question) > max_chars or len(reference) > max_chars:
            yield loc, ValueError(f"text longer than {max_chars:,} characters")
            continue
        yield loc, (question, reference, meta)


def _quota(cfg: SeedsConfig, index: int) -> int | None:
    source = cfg.sources[index]
    if source.sample is not None:
        return source.sample
    if cfg.sample is None:
        return None
    per, extra = divmod(cfg.sample, len(cfg.sources))
    return per + (1 if index < extra else 0)


def _with_overrides(cfg: SeedsConfig, paths: list[str] | None) -> SeedsConfig:
    """`--seeds FILE...`: known files keep their configured mapping, others are question/answer."""
    if not paths:
        return cfg
    by_name = {Path(s.path).name: s for s in cfg.sources if s.path}
    sources = []
    for p in paths:
        known = by_name.get(Path(p).name)
        sources.append(
            known.model_copy(update={"path": p})
            if known
            else SourceConfig(path=p, domain="general", name=Path(p).stem)
        )
    return cfg.model_copy(update={"sources": sources})


def contamination_index(cfg: SeedsConfig) -> ContaminationIndex:
    """Every evaluation set's questions. A set that cannot be read is an error, one line per
    set (all of them named at once): a run must not go on silently contaminated."""
    index = ContaminationIndex(n=cfg.decontamination.ngram)
    unreadable = []
    for i, ref in enumerate(cfg.decontamination.eval_sets):
        try:
            for loc, mapped in iter_mapped(ref, cfg.max_row_bytes, 10**9):
                if not isinstance(mapped, ValueError):
                    index.add(mapped[0], f"{ref.label}:{loc}")
        except SeedSourceError as exc:
            where = f"seeds.decontamination.eval_sets[{i}] ({ref.label})"
            unreadable.append(f"{where}: {exc}".replace("the source's `path:`", "its `path:`"))
    if unreadable:
        raise SeedSourceError("\n".join(unreadable))
    return index


def _reject(result: LoadResult, stage: str, reason: str, source: str, loc: str, **kw: Any) -> None:
    result.rejects.append(Reject(stage=stage, reason=reason, source=source, location=loc, **kw))


def _drop(
    result: LoadResult, cfg: SeedsConfig, c: _Candidate, stage: str, reason: str, detail: str
) -> None:
    """Reject a sampled candidate, naming its source, line and seed id."""
    label = cfg.sources[c.order[0]].label
    _reject(result, stage, reason, label, c.location, seed_id=c.id, detail=detail)


@dataclass
class _Scan:
    """One pass over the sources: the sampled candidates that survived decontamination and
    near-dedupe, each source's reservoirs, and the contamination index."""

    result: LoadResult
    reservoirs: list[_Reservoir]
    pools: list[_Reservoir]
    clean: list[_Candidate]
    contamination: ContaminationIndex


#: tell(step, done, total): how far a long step has got (total 0: not known in advance)
Tell = Callable[[str, int, int], None]


def _scan(
    cfg: SeedsConfig, scale: int = 1, taken: Sequence[Seed] = (), tell: Tell | None = None
) -> _Scan:
    """Read every source into reservoirs of `scale` x its quota (oversampled), then drop
    contaminated candidates and near duplicates. Seeds already `taken` (backfill) are left
    out of the candidates, and a candidate that nearly duplicates one of them is dropped.
    `tell` hears the rows read, the candidates checked for contamination and near-dedupe."""
    result = LoadResult()
    seen: dict[bytes, str] = {}
    reservoirs: list[_Reservoir] = []
    pools: list[_Reservoir] = []
    pool_cap = max(1, cfg.retrieval_pool // len(cfg.sources))
    for s_index, source in enumerate(cfg.sources):
        label = source.label
        quota = _quota(cfg, s_index)
        cap = None if quota is None else math.ceil(quota * scale * cfg.oversample) + 5
        sample = _Reservoir(cap, random.Random(f"{cfg.random_seed}:sample:{source.label}"))
        pool = _Reservoir(pool_cap, random.Random(f"{cfg.random_seed}:pool:{source.label}"))
        reading = f"reading {label}"
        number = -1
        for number, (loc, mapped) in enumerate(
            iter_mapped(source, cfg.max_row_bytes, cfg.max_chars)
        ):
            result.loaded += 1
            if tell is not None and number % TELL_EVERY == TELL_EVERY - 1:
                tell(reading, number + 1, 0)
            if isinstance(mapped, ValueError):
                result.rejected += 1
                if isinstance(mapped, Skip):
                    result.skipped += 1
                _reject(result, "load", str(mapped), label, loc)
                continue
            question, reference, meta = mapped
            sid = seed_id(label, question, reference)
            canon = canonical(question)
            # Without exact dedupe a row is still one seed however often it is repeated: a
            # seed is its content (its id), and one id stands for one seed everywhere.
            key = digest(canon) if cfg.dedupe.exact else bytes.fromhex(sid)
            kept = seen.get(key)
            if kept is not None:
                result.exact_duplicates += 1
                _reject(
                    result,
                    "dedupe",
                    "exact duplicate" if cfg.dedupe.exact else "the same row again (same seed)",
                    label,
                    loc,
                    seed_id=sid,
                    detail=f"kept {kept}",
                )
                continue
            seen[key] = sid
            candidate = _Candidate((s_index, number), sid, question, reference, meta, loc, canon)
            sample.add(candidate)
            pool.add(candidate)
        if tell is not None:
            tell(reading, number + 1, number + 1)
        reservoirs.append(sample)
        pools.append(pool)
    del seen

    contamination = contamination_index(cfg)
    candidates = sorted(c for r in reservoirs for c in r.items)
    clean: list[_Candidate] = []
    for number, c in enumerate(candidates, 1):
        if tell is not None and len(contamination) and number % TELL_EVERY == 0:
            tell("decontamination", number, len(candidates))
        hit = contamination.match(c.question) if len(contamination) else None
        if hit is not None:
            result.contaminated += 1
            reason = f"shares a {cfg.decontamination.ngram}-word sequence with an evaluation set"
            _drop(result, cfg, c, "decontaminate", reason, f"{hit[1]}: {hit[0][:120]}")
        else:
            clean.append(c)
    taken_ids = {t.id for t in taken}
    if tell is not None and len(contamination):
        tell("decontamination", len(candidates), len(candidates))
    clean = [c for c in clean if c.id not in taken_ids]
    known = [canonical(t.question) for t in taken]
    eligible = [i for i, c in enumerate(clean) if len(c.canon.split()) >= cfg.dedupe.min_words]
    if cfg.dedupe.near and eligible:
        found = near_duplicates(
            [*known, *(clean[i].canon for i in eligible)],
            cfg.dedupe.threshold,
            cfg.dedupe.num_perm,
            cfg.dedupe.ngram,
            tell,
        )
        found = [d for d in found if d.index >= len(known)]
        removed = {eligible[d.index - len(known)] for d in found}
        for d in found:
            c = clean[eligible[d.index - len(known)]]
            if d.kept < len(known):
                kept_id = taken[d.kept].id
            else:
                kept_id = clean[eligible[d.kept - len(known)]].id
            result.near_duplicates += 1
            reason = f"near duplicate (similarity {d.similarity:.2f})"
            _drop(result, cfg, c, "dedupe", reason, f"kept {kept_id}")
        clean = [c for i, c in enumerate(clean) if i not in removed]
    return _Scan(result, reservoirs, pools, clean, contamination)


def load_seeds(
    cfg: SeedsConfig, override_paths: list[str] | None = None, tell: Tell | None = None
) -> LoadResult:
    """Read every source and return sampled, deduplicated, decontaminated seeds; `tell`
    hears how far reading, decontamination and near-dedupe have got."""
    cfg = _with_overrides(cfg, override_paths)
    scan = _scan(cfg, tell=tell)
    result, clean = scan.result, scan.clean
    for s_index, source in enumerate(cfg.sources):
        survivors = [c for c in clean if c.order[0] == s_index]
        quota = _quota(cfg, s_index)
        reserve = scan.reservoirs[s_index]
        if quota is not None and len(survivors) < quota and reserve.seen > len(reserve.items):
            log.warning(
                "%s: %d seeds kept of %d asked: duplicates and contamination used up the "
                "oversample reserve (raise seeds.oversample)",
                source.label,
                len(survivors),
                quota,
            )
        if quota is not None and len(survivors) > quota:
            rng = random.Random(f"{cfg.random_seed}:quota:{source.label}")
            survivors = sorted(rng.sample(survivors, quota))
        result.seeds.extend(_to_seed(c, source) for c in survivors)
    taken = {s.id for s in result.seeds}
    contamination = scan.contamination
    for s_index, pool in enumerate(scan.pools):
        source = cfg.sources[s_index]
        for c in sorted(pool.items):
            if c.id in taken or not len(contamination) or contamination.match(c.question) is None:
                result.pool.append(_to_seed(c, source))
    return result


def quotas(cfg: SeedsConfig, override_paths: list[str] | None = None) -> dict[str, int | None]:
    """Each source's label and the seeds it is to give (None: every row)."""
    cfg = _with_overrides(cfg, override_paths)
    return {source.label: _quota(cfg, i) for i, source in enumerate(cfg.sources)}


def _backfill_order(random_seed: int, seed_id: str) -> str:
    return hashlib.sha256(f"{random_seed}:backfill:{seed_id}".encode()).hexdigest()


def load_more(
    cfg: SeedsConfig,
    override_paths: list[str] | None,
    taken: list[Seed],
    wanted: dict[str, int],
    round_: int,
    tell: Tell | None = None,
) -> LoadResult:
    """Further seeds for backfill round `round_` (1, 2, ...): up to `wanted[label]` new seeds
    of each source, none of them in `taken` nor a near duplicate of one.

    Round r samples 2**r times each source's quota, so its candidates do not depend on how
    many are wanted, and the new seeds are the first in an order hashed from their ids: a
    rerun that needs fewer takes a prefix of the same seeds (its calls are cache hits). A
    source whose every row was a candidate and that still falls short is `exhausted`."""
    cfg = _with_overrides(cfg, override_paths)
    scan = _scan(cfg, scale=2**round_, taken=taken, tell=tell)
    more = LoadResult(loaded=scan.result.loaded)
    for s_index, source in enumerate(cfg.sources):
        need = wanted.get(source.label, 0)
        if need <= 0:
            continue
        fresh = [c for c in scan.clean if c.order[0] == s_index]
        fresh.sort(key=lambda c: _backfill_order(cfg.random_seed, c.id))
        reserve = scan.reservoirs[s_index]
        if len(fresh) < need and reserve.seen <= len(reserve.items):
            more.exhausted.append(source.label)
        more.seeds.extend(_to_seed(c, source) for c in sorted(fresh[:need]))
    # the sampled candidates' drops; the rows the first load reported (bad rows, exact
    # duplicates) are not repeated, and the caller skips drops it already has
    more.rejects = [
        r for r in scan.result.rejects if r.stage != "load" and r.reason != "exact duplicate"
    ]
    return more


def _to_seed(c: _Candidate, source: SourceConfig) -> Seed:
    return Seed(
        id=c.id,
        source=source.label,
        domain=source.domain,
        question=c.question.strip(),
        reference=c.reference.strip(),
        meta={**c.meta, "location": c.location},
    )
