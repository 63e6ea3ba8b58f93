"""Versions of a run's outputs in one folder, switched atomically (DESIGN.md section 4).

    DIR/
      current -> versions/<id>                      the published version: one symlink
      dataset.parquet -> current/dataset.parquet    each file of the run contract, the same
      ...                                           way (the names never change)
      versions/<id>/                                published versions, the newest kept
      versions/.staging-*/                          a run's outputs while it writes them
      attempts/<id>/                                outputs of runs that failed their gates

A version id sorts by time: `20261207T020000Z-<first 8 hex of dataset.parquet's sha256>`.
A version folder is complete before `current` points at it (written under a staging name,
renamed whole), and `current` is replaced by one rename, so a kill -9 at any moment leaves
either the old version published or the new one, never files of both. A reader who opens
several files while a run may switch resolves DIR/current once (os.path.realpath) and reads
them from there.

Nothing here deletes a file it did not write: files of the contract's names that no version
owns are adopted as the previous version when a MASTER summary.json is among them (an output
folder written before versions existed), and refused with one line otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("master")

#: the run contract: every name a version may hold, linked at the top of the output folder
CONTRACT = (
    "dataset.parquet",
    "dataset.jsonl",
    "messages.jsonl",
    "llamafactory.jsonl",
    "prompt_completion.jsonl",
    "dataset_info.json",
    "llamafactory_lora.yaml",
    "rejects.parquet",
    "README.md",
    "plot_counts.png",
    "plot_lengths.png",
    "plot_checks.png",
    "hf",
    "report.md",
    "summary.json",
)
CURRENT = "current"
VERSIONS = "versions"
ATTEMPTS = "attempts"
STAGING = ".staging-"
ADOPTING = ".adopting"


class ForeignFilesError(Exception):
    """The output folder holds files of the contract's names that no MASTER run wrote."""


def version_id(digest: str, when: datetime | None = None) -> str:
    """`20261207T020000Z-1a2b3c4d`: UTC time to the second, then a short content hash."""
    stamp = (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{digest[:8]}"


def content_digest(folder: Path) -> str:
    """sha256 of a version's dataset.parquet (of its summary.json when it has none)."""
    for name in ("dataset.parquet", "summary.json"):
        if (folder / name).is_file():
            with (folder / name).open("rb") as fh:
                return hashlib.file_digest(fh, "sha256").hexdigest()
    return hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Version:
    """One version folder: published (under versions/) or a failed attempt (attempts/)."""

    id: str
    path: Path
    published: bool = True
    summary: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def at(cls, path: Path, published: bool = True) -> Version:
        try:
            summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            summary = {}
        return cls(path.name, path, published, summary if isinstance(summary, dict) else {})


def _is_master_summary(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"seeds", "quality", "config_hash"} <= data.keys()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _symlink(target: str, at: Path) -> None:
    """Point `at` to `target` in one rename (an existing link is replaced, never a file)."""
    tmp = at.with_name(f".{at.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, at)


class OutputFolder:
    """An output folder of versions. Every method but the readers expects the caller to hold
    the folder's lock (flows/core/files.py:output_lock)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / VERSIONS
        self.attempts_dir = self.root / ATTEMPTS

    # --- reading ---------------------------------------------------------------------------

    def current(self) -> Version | None:
        """The published version, or None before the first."""
        link = self.root / CURRENT
        try:
            target = os.readlink(link)
        except OSError:
            return None
        path = (self.root / target).resolve()
        return Version.at(path) if path.is_dir() else None

    def _list(self, folder: Path, published: bool) -> list[Version]:
        if not folder.is_dir():
            return []
        return [
            Version.at(p, published)
            for p in sorted(folder.iterdir())
            if p.is_dir() and not p.name.startswith(".")
        ]

    def versions(self) -> list[Version]:
        """Published versions, oldest first."""
        return self._list(self.versions_dir, True)

    def attempts(self) -> list[Version]:
        """Runs that failed their gates, oldest first."""
        return self._list(self.attempts_dir, False)

    def find(self, name: str) -> Version:
        """A version or attempt by id (or a unique prefix of one); LookupError names it."""
        every = [*self.versions(), *self.attempts()]
        exact = [v for v in every if v.id == name]
        found = exact or [v for v in every if v.id.startswith(name)]
        if len(found) != 1:
            known = ", ".join(v.id for v in every[-5:]) or "none"
            what = "no" if not found else "more than one"
            raise LookupError(f"{self.root}: {what} version {name!r} (latest: {known})")
        return found[0]

    # --- writing (under the lock) ----------------------------------------------------------

    def prepare(self) -> None:
        """Before a run writes: remove what a killed run left staged (the lock says no run is
        writing), and adopt files no version owns as the previous version."""
        if self.versions_dir.is_dir():
            for stale in self.versions_dir.glob(f"{STAGING}*"):
                shutil.rmtree(stale, ignore_errors=True)
        self._adopt()

    def _loose(self) -> list[str]:
        """The contract names present as real files or folders, not our links."""
        return [
            n for n in CONTRACT if not (self.root / n).is_symlink() and (self.root / n).exists()
        ]

    def _adopt(self) -> None:
        loose = self._loose()
        adopting = self.versions_dir / ADOPTING
        if not loose and not adopting.exists():
            return
        if not adopting.exists() and not _is_master_summary(self.root / "summary.json"):
            names = ", ".join(loose)
            raise ForeignFilesError(
                f"{self.root}: {names} {'is' if len(loose) == 1 else 'are'} not from a MASTER "
                "run (no MASTER summary.json beside them), and this folder's run would "
                "replace them: move them out of the folder or choose another --out"
            )
        adopting.mkdir(parents=True, exist_ok=True)
        # summary.json last: an adoption killed half-way is finished by the next run
        for name in sorted(loose, key=lambda n: n == "summary.json"):
            os.replace(self.root / name, adopting / name)
        summary = adopting / "summary.json"
        when = datetime.fromtimestamp(
            summary.stat().st_mtime if summary.exists() else adopting.stat().st_mtime, UTC
        )
        vid = version_id(content_digest(adopting), when)
        os.replace(adopting, self.versions_dir / vid)
        self._switch(self.versions_dir / vid)
        log.info("%s: adopted the files of an earlier run as version %s", self.root, vid)

    def stage(self) -> Path:
        """A fresh folder for this run's outputs (renamed into a version when it settles)."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=STAGING, dir=self.versions_dir))

    def unique(self, vid: str) -> str:
        """`vid`, or `vid.2`, `vid.3`... when a run of the same second made the same rows."""
        n, name = 1, vid
        while (self.versions_dir / name).exists() or (self.attempts_dir / name).exists():
            n += 1
            name = f"{vid}.{n}"
        return name

    def publish(self, staged: Path, vid: str) -> Version:
        """The staged outputs become version `vid` and the published one."""
        vid = self.unique(vid)
        target = self.versions_dir / vid
        os.replace(staged, target)
        self._switch(target)
        return Version.at(target)

    def set_aside(self, staged: Path, vid: str) -> Version:
        """The staged outputs of a run that failed its gates, kept under attempts/."""
        self.attempts_dir.mkdir(parents=True, exist_ok=True)
        target = self.attempts_dir / self.unique(vid)
        os.replace(staged, target)
        return Version.at(target, published=False)

    def _switch(self, version: Path) -> None:
        """Point `current` at `version`; the contract's links follow it."""
        names = {n for n in CONTRACT if (version / n).exists()}
        for name in sorted(names):  # links of names the old version lacks dangle until now
            at = self.root / name
            target = f"{CURRENT}/{name}"
            if at.is_symlink() and os.readlink(at) == target:
                continue
            if not at.is_symlink() and at.exists():
                raise ForeignFilesError(
                    f"{at}: a file no MASTER run wrote is in the way of the published "
                    "version; move it out of the folder"
                )
            _symlink(target, at)
        _symlink(f"{VERSIONS}/{version.name}", self.root / CURRENT)
        _fsync_dir(self.root)
        for name in CONTRACT:
            at = self.root / name
            if name not in names and at.is_symlink():
                at.unlink()

    def prune(self, keep: int) -> list[str]:
        """Keep the newest `keep` versions and attempts (never the published one); return the
        ids removed."""
        current = self.current()
        removed = []
        for group in (self.versions(), self.attempts()):
            for version in group[: max(len(group) - keep, 0)]:
                if current is not None and version.path == current.path:
                    continue
                shutil.rmtree(version.path, ignore_errors=True)
                removed.append(version.id)
        return removed


@dataclass(frozen=True)
class Release:
    """One run's place in the output folder: where it writes (`staged`, inside versions/)
    and the published version it may replace (`previous`, None before the first)."""

    folder: OutputFolder
    staged: Path
    previous: Version | None

    def new_id(self, digest: str | None = None) -> str:
        """A free version id for the staged outputs (their dataset.parquet written), whose
        content_digest the caller may already hold."""
        return self.folder.unique(version_id(digest or content_digest(self.staged)))
