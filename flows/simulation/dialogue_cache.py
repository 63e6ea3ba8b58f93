"""The whole-dialogue cache: a finished dialogue stored under the hash of everything it
depends on, so an unchanged rerun does no DSPy work at all.

The key covers the seed's content, the scenario, its knobs (debate rounds, the analogy's
second question), the program version (instructions, fields and demos of every predictor)
and the model settings of the roles the scenario uses. It leaves out what does not change
an answer: endpoints, timeouts, prices, concurrency. Values are JSON (diskcache JSONDisk).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import diskcache

from flows.core.code_version import source_fingerprint
from flows.planning.jobs import ROLES_BY_SCENARIO, Job
from modules.cache.canonical import canonical_json
from modules.cache.disks import SafeJSONDisk, seal
from modules.cache.group_commit import GroupCommit
from modules.lm.call_cache import CallRecord, CallStore
from modules.lm.settings import RoleLMs

DIALOGUE_FORMAT = 2  # 2: values sealed with a checksum
VERDICT_FORMAT = 1
VERDICT = "verdict:"  # key prefix of stored verdicts, beside the dialogues
# the code a verdict depends on (besides the config and the judge): any edit recomputes
CHECK_CODE = (
    "flows.quality.checks",
    "flows.quality.answers",
    "flows.quality.verification",
    "modules.scenarios.guards",
)
_STORED = [f.name for f in fields(CallRecord) if f.name != "cached"]


def dialogue_key(job: Job, program_version: str, lms: RoleLMs) -> str:
    seed, similar = job.seed, job.similar
    payload = {
        "v": DIALOGUE_FORMAT,
        "scenario": job.scenario,
        "seed": [seed.id, seed.question, seed.reference],
        "rounds": job.rounds if job.scenario == "debate" else None,
        "similar": [similar.id, similar.question, similar.reference] if similar else None,
        "program": program_version,
        "lms": {
            role: {
                k: v
                for k, v in lms.for_role(role).fingerprint().items()  # type: ignore[arg-type]
                if k != "api_base"
            }
            for role in ROLES_BY_SCENARIO[job.scenario]
        },
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def replayed_calls(hit: dict[str, Any]) -> list[CallRecord]:
    """The calls a cached dialogue (or verdict) once made, now counted as cache hits."""
    return [CallRecord(**{**c, "cached": True}) for c in hit["calls"]]


def _stored(calls: list[CallRecord]) -> list[dict[str, Any]]:
    # asdict() deep-copies; the fields are plain values, so read them in field order
    return [{k: getattr(c, k) for k in _STORED} for c in calls]


class DialogueStore:
    def __init__(self, directory: str | Path, calls: CallStore | None = None) -> None:
        """`calls`: the run's call store, committed before each batch of dialogues, so a
        dialogue on disk always has its calls on disk too (see GroupCommit)."""
        self.cache = diskcache.Cache(
            str(Path(directory) / "dialogues"), disk=SafeJSONDisk, cull_limit=0
        )  # no eviction check per write: see modules/lm/call_cache.py CallStore
        self.writes = GroupCommit(self.cache, first=(calls.writes,) if calls else ())

    def get(self, key: str) -> dict[str, Any] | None:
        body = self._get(key)
        return body if body is not None and isinstance(body.get("turns"), list) else None

    def put(
        self, key: str, turns: list[dict[str, Any]], calls: list[CallRecord], version: str
    ) -> None:
        body = {"turns": turns, "calls": _stored(calls), "program_version": version}
        self._put(key, {**body, "ts": time.time()})

    def _put(self, key: str, body: dict[str, Any]) -> None:
        self.writes.set(key, {"body": body, "check": seal(key, body)})

    def _get(self, key: str) -> dict[str, Any] | None:
        value = self.writes.read_checked(key, "body")
        body = value.get("body") if value is not None else None
        return body if isinstance(body, dict) else None

    def close(self) -> None:
        self.writes.close()
        self.cache.close()


class Verdicts:
    """A cached dialogue's verdicts, so an unchanged rerun neither re-checks nor re-judges it.

    Stored beside the dialogue under a key that also covers the quality config, the judge's
    model settings and program version, and the source of the check code; verdicts that could
    not be reached (a judge error, a spent budget) are never stored: the next run retries."""

    def __init__(self, store: DialogueStore, salt: str) -> None:
        self.store, self.salt = store, salt

    @staticmethod
    def salt_for(quality: dict[str, Any], judge: dict[str, Any] | None) -> str:
        payload = {
            "v": VERDICT_FORMAT,
            "code": source_fingerprint(*CHECK_CODE),
            "quality": quality,
            "judge": judge,
        }
        return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()

    def _key(self, dialogue_key: str) -> str:
        return VERDICT + hashlib.sha256(f"{self.salt}:{dialogue_key}".encode()).hexdigest()

    def get(self, dialogue_key: str) -> tuple[dict[str, Any], list[CallRecord]] | None:
        body = self.store._get(self._key(dialogue_key))
        if body is None or not isinstance(body.get("quality"), dict):
            return None
        return body["quality"], replayed_calls(body)

    def put(
        self, dialogue_key: str, quality: dict[str, Any], calls: list[CallRecord], version: str
    ) -> None:
        """`version`: the dialogue's program version, so `cache prune --unused` sees it."""
        body = {"quality": quality, "calls": _stored(calls), "program_version": version}
        self.store._put(self._key(dialogue_key), {**body, "ts": time.time()})
