"""The plain asyncio baseline: the three scenario dialogues as a straight loop over aiohttp.

No framework, no cache, no DSPy: each dialogue is its sequence of chat-completion calls, each
prompt carrying the dialogue so far, with an ``asyncio.Semaphore`` keeping ``concurrency``
dialogues in flight. It is what the pipeline's throughput is compared against.

Calls per dialogue, as in modules/*.py: error correction 3 (weak answer, teacher critique,
strong revision), debate 2 per round + 1 (students A and B each round, then C's summary),
analogy 3 (teacher explanation, student solution, student solution of the similar question).

    python benchmarks/baseline.py --url http://127.0.0.1:PORT/v1 --dialogues 2000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from pathlib import Path

import aiohttp

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SCENARIOS = ("error_correction", "debate", "analogy")


def _unit(text: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _questions(count: int) -> list[tuple[str, str]]:
    rows = []
    path = SHARED / "gsm8k" / "train.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    for i in range(count):
        if lines:
            row = json.loads(lines[i % len(lines)])
            rows.append((f"{row['question']} (#{i})", row["answer"]))
        else:
            rows.append((f"What is {i} + {i}?", f"{2 * i}"))
    return rows


def _messages(field: str, instructions: str, **inputs: str) -> list[dict[str, str]]:
    system = (
        f"Your output fields are:\n1. `{field}` (str)\n"
        f"All interactions will be structured in the following way.\n"
        f"[[ ## {field} ## ]]\n{{{field}}}\n\n[[ ## completed ## ]]\n"
        f"In adhering to this structure, your objective is: {instructions}"
    )
    user = "\n\n".join(f"[[ ## {k} ## ]]\n{v}" for k, v in inputs.items())
    user += (
        f"\n\nRespond with the corresponding output fields, starting with the field "
        f"`[[ ## {field} ## ]]`, and then ending with the marker for `[[ ## completed ## ]]`."
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


class Client:
    """One aiohttp session; a call is one POST, its answer the first choice's content."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url.rstrip("/") + "/chat/completions"
        self.calls = 0

    async def say(self, model: str, field: str, instructions: str, **inputs: str) -> str:
        body = {
            "model": model,
            "messages": _messages(field, instructions, **inputs),
            "temperature": 0.7,
            "max_tokens": 256,
        }
        async with self.session.post(self.url, json=body) as resp:
            resp.raise_for_status()
            data = await resp.json()
        self.calls += 1
        return data["choices"][0]["message"]["content"]


async def error_correction(c: Client, q: str, ref: str) -> list[str]:
    turns = [q]
    turns.append(await c.say("weak", "answer", "Answer as a weak student.", question=q))
    dialogue = "\n\n".join(turns)
    turns.append(
        await c.say("strong", "critique", "Critique.", question=q, reference=ref, dialogue=dialogue)
    )
    dialogue = "\n\n".join(turns)
    turns.append(
        await c.say("strong", "revision", "Revise.", question=q, reference=ref, dialogue=dialogue)
    )
    return turns


async def debate(c: Client, q: str, ref: str, rounds: int) -> list[str]:
    said: list[str] = []
    for _ in range(rounds):
        for name in ("Student A", "Student B"):
            so_far = "\n\n".join(said) or "(nobody has spoken yet)"
            said.append(
                await c.say(
                    "peer", "argument", "Debate.", student_name=name, question=q, dialogue=so_far
                )
            )
    summary = await c.say(
        "strong", "summary", "Summarise.", question=q, reference=ref, dialogue="\n\n".join(said)
    )
    return [q, *said, summary]


async def analogy(c: Client, q: str, ref: str, similar: str) -> list[str]:
    turns = [q]
    turns.append(await c.say("strong", "explanation", "Explain.", question=q, reference=ref))
    turns.append(
        await c.say(
            "strong", "solution", "Solve.", question=q, reference=ref, dialogue="\n\n".join(turns)
        )
    )
    turns.append(f"Good job, please take a look at this similar question.\n\n{similar}")
    turns.append(
        await c.say(
            "strong",
            "solution",
            "Solve.",
            question=similar,
            reference="(not given)",
            dialogue="\n\n".join(turns),
        )
    )
    return turns


async def run(url: str, dialogues: int, concurrency: int = 64) -> dict[str, object]:
    rows = _questions(dialogues)
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        client = Client(session, url)

        async def one(i: int) -> None:
            q, ref = rows[i]
            point = _unit(q, "scenario")
            async with gate:
                if point < 1 / 3:
                    await error_correction(client, q, ref)
                elif point < 2 / 3:
                    await debate(client, q, ref, 1 if _unit(q, "rounds") < 0.5 else 2)
                else:
                    await analogy(client, q, ref, rows[(i + 1) % len(rows)][0])

        cpu0, start = time.process_time(), time.monotonic()
        await asyncio.gather(*(one(i) for i in range(dialogues)))
        wall, cpu = time.monotonic() - start, time.process_time() - cpu0
    return {
        "dialogues": dialogues,
        "calls": client.calls,
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "calls_per_s": round(client.calls / wall, 2),
        "cpu_ms_per_call": round(cpu * 1000 / max(client.calls, 1), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="base URL of an OpenAI-compatible server")
    parser.add_argument("--dialogues", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.dialogues, args.concurrency))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
