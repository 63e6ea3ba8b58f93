"""The run cache: a finished run's output files under the hash of everything that made them.

The per-call and per-dialogue caches make an unchanged rerun free of LM calls, but it still
reads, rebuilds, re-verifies and re-writes every row: minutes at 100,000 seeds. When nothing
at all changed (the same bytes in every seed file, the same config, programs, code and
library versions), the outputs are already known, so the run restores them instead, like a
build system's action cache. Any change misses, and the run takes the per-dialogue path.

Only settled runs are stored: one that a budget, the circuit breaker, a failed LM call or an
unreachable judge left unfinished must be retried, not replayed. Entries are hard links to
the output files (no copy, no extra disk), listed with their sha256 in a sealed manifest; a
file edited in place, a damaged manifest or a missing file makes the entry a miss, so a
restore is byte-identical or does not happen. Hub sources cannot be fingerprinted without
the network, so runs reading them are never stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from flows.core.code_version import source_fingerprint
from flows.core.config import DataRef, MasterConfig
from flows.publish.versions import CONTRACT
from modules.cache.canonical import canonical_json

RUN_FORMAT = 1
MANIFEST = "manifest.json"
# what a run writes besides summary.json and report.md, which describe the run itself and are
# written anew by a replay
OUTPUTS = tuple(name for name in CONTRACT if name not in ("summary.json", "report.md"))
LIBRARIES = ("datasets", "polars", "pyarrow", "dspy", "matplotlib")
STALE_STAGING_S = 3600


def _file_digest(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _source_prints(refs: Iterable[DataRef | str]) -> list[Any] | None:
    """Name, size and sha256 of every file a source reads; None if one is not a local file."""
    prints: list[Any] = []
    for ref in refs:
        path = ref if isinstance(ref, str) else ref.path
        if path is None:
            return None  # a Hugging Face dataset: it may change under the same id
        root = Path(path).expanduser()
        if not root.exists():
            return None  # the run reports it; nothing to replay
        prints.append(
            [
                str(path),
                [
                    [
                        str(f.relative_to(root)) if f != root else "",
                        f.stat().st_size,
                        _file_digest(f),
                    ]
                    for f in _files(root)
                ],
            ]  # fmt: skip
        )
    return prints


def run_key(
    cfg: MasterConfig,
    versions: Mapping[str, str],
    seed_paths: Sequence[str] | None = None,
    embedder: object | None = None,
) -> str | None:
    """The hash of a run's inputs, or None when they cannot all be fingerprinted.

    `versions` are the program versions (scenarios and judge). Endpoints, timeouts and
    concurrency are left out (where and how fast the models are asked, not what); the output
    folder too, so the same inputs replay into any folder."""
    if not cfg.cache.enabled or not cfg.cache.replay_runs:
        return None
    sources = _source_prints([*(seed_paths or cfg.seeds.sources),
                              *cfg.seeds.decontamination.eval_sets])  # fmt: skip
    if sources is None:
        return None
    config = cfg.model_dump(mode="json", exclude={"run", "cache", "optimize"})
    for role in config["lms"].values():
        for key in ("api_base", "timeout_s", "max_concurrency"):
            role.pop(key, None)
    for key in ("keep_versions", "gates", "force"):  # whether to publish, not what
        config["publish"].pop(key, None)
    payload = {
        "v": RUN_FORMAT,
        "code": source_fingerprint("flows", "modules", "signatures"),
        "libraries": {name: version(name) for name in LIBRARIES},
        "config": config,
        "seed_paths": list(seed_paths or []),
        "sources": sources,
        "programs": dict(versions),
        "embedder": None if embedder is None else getattr(embedder, "__qualname__", repr(embedder)),
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def _link(source: Path, target: Path) -> None:
    """Hard-link source at target (a copy across file systems), replacing target atomically."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


def _link_tree(source: Path, target: Path) -> None:
    """source (a file or a folder) at target; a folder is built aside and swapped in whole."""
    if source.is_file():
        _link(source, target)
        return
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    for f in _files(source):
        dest = staging / "data" / f.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _link(f, dest)
    if target.exists():
        os.replace(target, staging / "old")
    os.replace(staging / "data", target)
    shutil.rmtree(staging)


class RunStore:
    """cache_dir/runs/<key>/: the outputs (hard links) and a sealed manifest of their hashes."""

    def __init__(self, directory: str | Path, keep: int) -> None:
        self.root = Path(directory) / "runs"
        self.keep = keep

    def _seal(self, key: str, body: dict[str, Any]) -> str:
        return hashlib.sha256(f"{key}:{canonical_json(body)}".encode()).hexdigest()

    def restore(self, key: str, out: Path) -> dict[str, Any] | None:
        """Put the stored outputs in `out` and return the stored manifest body, or None."""
        entry = self.root / key
        try:
            stored = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
            body, check = stored["body"], stored["check"]
            if check != self._seal(key, body):
                raise ValueError("manifest does not match its key")
            for name, digest in body["files"].items():
                if _file_digest(entry / name) != digest:
                    raise ValueError(f"{name} changed since it was stored")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            shutil.rmtree(entry, ignore_errors=True)  # damaged or edited: recompute
            return None
        out.mkdir(parents=True, exist_ok=True)
        present = {name.split("/", 1)[0] for name in body["files"]}
        for name in OUTPUTS:
            if name in present:
                _link_tree(entry / name, out / name)
            elif (out / name).is_dir():
                shutil.rmtree(out / name)  # as write_dataset: no stale hf/ beside 0 rows
            else:
                (out / name).unlink(missing_ok=True)
        os.utime(entry)  # recently used: kept by the pruning below
        return body

    def remember(self, key: str, out: Path, body: dict[str, Any]) -> None:
        """Store `out`'s output files under key (a complete entry appears at once, or none)."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging.", dir=self.root))
        try:
            files: dict[str, str] = {}
            for name in OUTPUTS:
                if not (out / name).exists():
                    continue
                _link_tree(out / name, staging / name)
                for f in _files(staging / name):
                    files[str(f.relative_to(staging))] = _file_digest(f)
            body = {**body, "files": files}
            manifest = {"body": body, "check": self._seal(key, body)}
            (staging / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
            target = self.root / key
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._prune()

    def _prune(self) -> None:
        """Keep the `keep` most recently used entries: a nightly run changes its inputs
        every night, and last month's outputs are not worth their disk. Staging folders an
        hour old were left by a killed run (a live one renames its own within seconds)."""
        for staging in self.root.glob(".staging.*"):
            if staging.stat().st_mtime < time.time() - STALE_STAGING_S:
                shutil.rmtree(staging, ignore_errors=True)
        entries = sorted(
            (p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for stale in entries[self.keep :]:
            shutil.rmtree(stale, ignore_errors=True)
