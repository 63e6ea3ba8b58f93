"""Canonical JSON must stay byte-identical to what every existing cache key was hashed from."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from dspy.lm15 import Config, Message, Request

from modules.cache.canonical import canonical_json, orjson_exact
from modules.cache.disks import SafeJSONDisk
from modules.lm.call_cache import CACHE_FORMAT, call_key, request_fields
from modules.lm.settings import EMBEDDED_DECODING, EMBEDDED_MODEL, LMSettings


def _reference(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _text(rng: random.Random) -> str:
    alphabet = 'ab Z09"\\/\n\t\x00\x1f\x7f\u2028é中😀'
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def _float(rng: random.Random) -> float:
    value = rng.choice((1, -1)) * rng.random() * 10 ** rng.uniform(-12, 300)
    return float(round(value, rng.randint(0, 8))) if rng.random() < 0.3 else value


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return _text(rng)
    if kind == 1:
        return rng.choice((True, False, None))
    if kind == 2:
        return rng.choice((0, -1, 2**31, 2**63 - 1, -(2**63), rng.randint(-(10**6), 10**6)))
    if kind in (3, 4):
        return _float(rng)
    if kind == 5:
        return rng.choice((float("nan"), float("inf"), 1e-05, 2.5e-08, 1e16, -0.0, 0.7))
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {_text(rng): _value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def test_random_values_are_written_as_json_dumps_writes_them() -> None:
    rng = random.Random(20261126)
    for _ in range(5000):
        value = _value(rng)
        assert canonical_json(value) == _reference(value), value


@pytest.mark.parametrize(
    "value",
    [
        2**63,  # past orjson's integers
        10**30,
        "\ud800",  # a lone surrogate: orjson refuses it
        {"a": "\udfff"},
        (1, 2.5),  # a tuple: orjson writes it too, but only lists are taken
        {1: "int key"},
        {"z": 1, "a": {"y": [1e-07, float("-inf")]}},
        [True, 1, 1.0],
    ],
)
def test_values_orjson_writes_differently_fall_back(value: Any) -> None:
    assert canonical_json(value) == _reference(value)


def test_what_json_dumps_refuses_is_still_refused() -> None:
    for value in ({"when": object()}, {(1, 2): "tuple key"}):
        with pytest.raises(TypeError):
            _reference(value)
        with pytest.raises(TypeError):
            canonical_json(value)


#: A call-cache key, written down: a DSPy upgrade (or a change of ours) that would turn every
#: cached call into a paid miss changes it and fails here. Change it only with CACHE_FORMAT.
PINNED_KEY = "248c5010709f560260aea57dc710fb08983c72acb931b2a9aa64e1386e4e99d9"


def test_a_call_key_is_built_from_fields_we_own_and_is_pinned() -> None:
    """The key hashes request_fields (model, system, messages, sampling: what the project
    reads off the request by name), through the fast canonical JSON, and equals a literal."""
    request = Request(
        model="weak",
        system="Your input fields are:\n1. `question` (str)",
        messages=(Message.user("[[ ## question ## ]]\nWhat is 2 + 2? é 😀"),),
        config=Config(temperature=0.7, max_tokens=256, seed=3),
    )
    data = request_fields(request)
    assert data == {
        "model": "weak",
        "system": "Your input fields are:\n1. `question` (str)",
        "messages": [["user", "[[ ## question ## ]]\nWhat is 2 + 2? é 😀"]],
        "tools": [],
        "sampling": {"max_tokens": 256, "temperature": 0.7, "seed": 3},
    }
    assert orjson_exact({"v": CACHE_FORMAT, "request": data, "rollout": 0})
    payload = {"v": CACHE_FORMAT, "request": data, "rollout": 2}
    expected = hashlib.sha256(_reference(payload).encode("utf-8")).hexdigest()
    assert call_key(request, 2) == expected == PINNED_KEY


def test_the_embedded_engines_decoding_is_in_its_call_keys_and_fingerprint() -> None:
    """The embedded engine decodes with settings no request carries (a repeat penalty): they
    are in its calls' keys and its role's fingerprint, so changing them recomputes its calls
    and dialogues instead of serving ones decoded otherwise; other models' keys are as before."""
    config = Config(temperature=0.8, max_tokens=160)
    embedded = Request(model=EMBEDDED_MODEL, messages=(Message.user("hi"),), config=config)
    remote = Request(model="openai/weak", messages=(Message.user("hi"),), config=config)
    assert request_fields(embedded)["sampling"]["decoding"] == EMBEDDED_DECODING
    assert "decoding" not in request_fields(remote)["sampling"]
    assert LMSettings(model=EMBEDDED_MODEL).fingerprint()["decoding"] == EMBEDDED_DECODING
    assert "decoding" not in LMSettings(model="openai/weak").fingerprint()


def test_cache_values_round_trip_and_older_rows_still_read(tmp_path: Path) -> None:
    """SafeJSONDisk writes values with orjson where that keeps them, json.dumps otherwise
    (NaN survives), and reads rows the standard library wrote before."""
    import diskcache

    values = [
        {"response": {"text": "é 😀 \u2028", "usage": {"in": 3}}, "ts": 1764000000.25},
        {"score": float("nan"), "tiny": 1e-07},
        [1, "two", None, True],
    ]
    with diskcache.Cache(str(tmp_path / "old"), disk=diskcache.JSONDisk) as old:
        for i, value in enumerate(values):
            old.set(f"k{i}", value)
    for folder in ("old", "new"):
        with diskcache.Cache(str(tmp_path / folder), disk=SafeJSONDisk) as cache:
            for i, value in enumerate(values):
                if folder == "new":
                    cache.set(f"k{i}", value)
                assert _reference(cache.get(f"k{i}")) == _reference(value)
