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

from flows.jobs import ROLES_BY_SCENARIO, Job
from modules.callcache import CallRecord, canonical_json, read_checked, seal
from modules.settings import RoleLMs

DIALOGUE_FORMAT = 2  # 2: values sealed with a checksum
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
    """The calls a cached dialogue once made, now counted as cache hits."""
    return [CallRecord(**{**c, "cached": True}) for c in hit["calls"]]


class DialogueStore:
    def __init__(self, directory: str | Path) -> None:
        self.cache = diskcache.Cache(
            str(Path(directory) / "dialogues"), disk=diskcache.JSONDisk, cull_limit=0
        )  # no eviction check per write: see modules/callcache.py CallStore

    def get(self, key: str) -> dict[str, Any] | None:
        value = read_checked(self.cache, key, "body")
        body = value.get("body") if value is not None else None
        if isinstance(body, dict) and isinstance(body.get("turns"), list):
            return body
        return None

    def put(
        self, key: str, turns: list[dict[str, Any]], calls: list[CallRecord], version: str
    ) -> None:
        # asdict() deep-copies; the fields are plain values, so read them in field order
        stored = [{k: getattr(c, k) for k in _STORED} for c in calls]
        body = {"turns": turns, "calls": stored, "program_version": version, "ts": time.time()}
        self.cache.set(key, {"body": body, "check": seal(key, body)})

    def close(self) -> None:
        self.cache.close()
