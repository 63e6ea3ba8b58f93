"""Canonical JSON: the text every cache key, checksum and fingerprint is a hash of.

The canonical form is ``json.dumps(data, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``, and it must never change: a different byte anywhere is a different key,
so every user's cache would miss after an upgrade. It is computed three times per LM call
(the key, the slot's system prompt, the response's checksum). orjson writes the same text,
much faster (benchmarks/RESULTS.md), for the values a request or a response holds (strings,
booleans, None, 64-bit integers, lists and dicts with string keys, and floats whose repr has
no negative exponent), so it is used exactly when the value has only those; anything else
(NaN, 1e-05, a tuple, a big integer, a non-string key) goes to ``json.dumps``, which then
writes what it always wrote (or raises what it always raised).
"""

from __future__ import annotations

import json
from math import isfinite
from typing import Any

import orjson

_SORTED = orjson.OPT_SORT_KEYS
_INT64 = 2**63


def orjson_exact(data: Any) -> bool:
    """Whether orjson writes this value exactly as json.dumps does. Why these cases: orjson
    writes 1e-05 as 0.00001 and NaN or infinity as null, serialises tuples, dataclasses and
    dates that json.dumps refuses or writes otherwise, and bounds integers to 64 bits."""
    stack = [data]
    pop, push = stack.pop, stack.extend
    while stack:
        value = pop()
        kind = type(value)
        if kind is str or kind is bool or value is None:
            continue
        if kind is dict:
            for key in value:
                if type(key) is not str:
                    return False
            push(value.values())
        elif kind is list:
            push(value)
        elif kind is int:
            if not -_INT64 <= value < _INT64:
                return False
        elif kind is float:
            if not isfinite(value) or (value and abs(value) < 1e-4):  # 1e-05: repr's exponent
                return False
        else:
            return False
    return True


def canonical_json(data: Any) -> str:
    """``json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``."""
    if orjson_exact(data):
        try:
            return orjson.dumps(data, option=_SORTED).decode("utf-8")
        except orjson.JSONEncodeError:  # a lone surrogate: json.dumps writes it, orjson won't
            pass
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
