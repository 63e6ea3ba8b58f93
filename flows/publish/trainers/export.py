"""Writing the trainers' files beside the dataset, a row at a time, with the length audit.

With publish.flawed_turns `mask` every file a trainer reads leaves the weight-0 turns
(flows/core/formats.py:assistant_weights) out of the loss: messages.jsonl and dataset.parquet
carry the weights (OpenAI fine-tuning, axolotl; written by flows/publish/writers.py), and here
LLaMA-Factory's file holds a row per trained turn (`mask_history`) and TRL's a prompt/completion
row per trained turn. With `train` every assistant turn is trained, in every file.

The length audit counts each LLaMA-Factory row as the recipe's template encodes it, with the
recipe model's tokenizer where it is cached locally, else the bundled one (then an estimate),
and says how many rows are over cutoff_len and which turn LLaMA-Factory would cut first;
publish.over_cutoff keeps them (and warns) or leaves them out of that file.

An empty dataset gets no trainer file at all (no dataset_info.json entry LLaMA-Factory could
not load, no recipe): `finish` says so in one line.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from flows.core.config import PublishConfig
from flows.core.files import atomic_path, write_json, write_text
from flows.core.formats import assistant_weights, message_speakers
from flows.publish.trainers import llamafactory, trl
from flows.publish.trainers.tokenizer import TokenCounter, counter

log = logging.getLogger("master")

#: every file `TrainerFiles` may write (the run contract lists them)
FILES = (llamafactory.FILE, trl.FILE, llamafactory.INFO_FILE, llamafactory.RECIPE_FILE)


def weighed_messages(row: dict[str, Any], mapping: str) -> list[dict[str, Any]]:
    """The row's messages, each assistant message with its training weight (0 or 1)."""
    weights = assistant_weights(row["turns"], row["scenario"], mapping)
    return [
        m if w is None else {**m, "weight": w}
        for m, w in zip(row["messages"], weights, strict=True)
    ]


def _labels(row: dict[str, Any], mapping: str) -> list[str]:
    """A name per message for the audit: the speakers whose turns it holds."""
    if row["scenario"] == "original":
        return ["question", "reference"]
    return ["+".join(dict.fromkeys(s)) for s in message_speakers(row["turns"], mapping)]


class TrainerFiles:
    """Fed every published row (`add`), in order; `finish` writes the files that need the
    whole dataset and returns summary.json's `training` block."""

    def __init__(self, out: Path, publish: PublishConfig, mapping: str) -> None:
        self.out, self.publish, self.mapping = out, publish, mapping
        self.masking = publish.flawed_turns == "mask"
        self.rows = {llamafactory.FILE: 0, trl.FILE: 0}
        self.dialogues = 0
        self.lengths: list[int] = []
        self.over = 0
        self.cut_first: Counter[str] = Counter()
        self.labels_cut = 0
        self._counter: TokenCounter | None = None
        self._fh: dict[str, IO[str]] = {}

    def add(self, row: dict[str, Any]) -> None:
        messages = weighed_messages(row, self.mapping)
        trained = [
            i
            for i, m in enumerate(messages)
            if m["role"] == "assistant" and (not self.masking or m["weight"] == 1)
        ]
        self.dialogues += 1
        if self._counter is None:  # loaded with the first row: an empty dataset needs none
            self._counter = counter(llamafactory.MODEL)
        labels = _labels(row, self.mapping)
        lengths = llamafactory.message_lengths(row["conversations"], self._counter.count)
        for conversation in llamafactory.rows(row["conversations"], trained, self.masking):
            n = len(conversation)
            fit = llamafactory.fit(lengths[:n], llamafactory.CUTOFF_LEN, self.masking)
            self.lengths.append(fit.length)
            if fit.kept < fit.length:
                self.over += 1
                self.cut_first[labels[fit.cut_first or 0]] += 1
                self.labels_cut += fit.labelled < fit.labelled_full
                if self.publish.over_cutoff == "drop":
                    continue
            record = {"conversations": conversation, "seed_id": row["seed_id"],
                      "scenario": row["scenario"]}  # fmt: skip
            self._write(llamafactory.FILE, record)
        for record in trl.rows(messages, trained):
            self._write(trl.FILE, record)

    def _write(self, name: str, record: dict[str, Any]) -> None:
        self._fh[name].write(json.dumps(record, ensure_ascii=False) + "\n")
        self.rows[name] += 1

    def finish(self) -> dict[str, Any]:
        """dataset_info.json and the recipe (when there are rows), and the `training` block."""
        name = self.publish.name
        if not self.dialogues:
            log.warning("no rows: no trainer files written (%s)", ", ".join(FILES))
            return {"flawed_turns": self.publish.flawed_turns, "files": [],
                    "note": "no rows: no trainer files written"}  # fmt: skip
        tokens = self._counter
        assert tokens is not None  # a row was added
        write_json(self.out / llamafactory.INFO_FILE, llamafactory.dataset_info(name))
        write_text(self.out / llamafactory.RECIPE_FILE, llamafactory.recipe(name, self.masking))
        ordered = sorted(self.lengths)
        audit = {
            "file": llamafactory.FILE,
            "tokenizer": tokens.name,
            "estimate": tokens.estimate,
            "template": llamafactory.TEMPLATE,
            "cutoff_len": llamafactory.CUTOFF_LEN,
            "rows": len(ordered),
            "max": ordered[-1] if ordered else 0,
            "p50": ordered[len(ordered) // 2] if ordered else 0,
            "p90": ordered[min(len(ordered) - 1, len(ordered) * 9 // 10)] if ordered else 0,
            "over_cutoff": self.over,
            "cut_first": dict(self.cut_first.most_common()),
            "trained_tokens_cut": self.labels_cut,
            "over_cutoff_rows": "dropped" if self.publish.over_cutoff == "drop" else "kept",
        }
        if self.over:
            log.warning(
                "%d of %d LLaMA-Factory rows are longer than cutoff_len %d (%s tokens%s); "
                "LLaMA-Factory cuts first: %s; %s (publish.over_cutoff)",
                self.over, len(ordered), llamafactory.CUTOFF_LEN, tokens.name,
                ", an estimate" if tokens.estimate else "",
                ", ".join(f"{k} ({v})" for k, v in self.cut_first.most_common()),
                audit["over_cutoff_rows"],
            )  # fmt: skip
        return {
            "flawed_turns": self.publish.flawed_turns,
            "files": [*FILES],
            "llamafactory": {
                "file": llamafactory.FILE,
                "rows": self.rows[llamafactory.FILE],
                "dataset": name,
                "template": llamafactory.TEMPLATE,
                "mask_history": self.masking,
            },  # fmt: skip
            "trl": {"file": trl.FILE, "rows": self.rows[trl.FILE]},
            "lengths": audit,
        }


class _NoRows(Exception):
    """No row was added: the row files are not renamed into place."""


@contextlib.contextmanager
def trainer_files(out: Path, publish: PublishConfig, mapping: str) -> Iterator[TrainerFiles]:
    """A TrainerFiles whose row files are renamed into place only when the block succeeds
    and there were rows (`finish` is the caller's, after the block)."""
    files = TrainerFiles(out, publish, mapping)
    try:
        with contextlib.ExitStack() as stack:
            for name in (llamafactory.FILE, trl.FILE):
                tmp = stack.enter_context(atomic_path(out / name))
                files._fh[name] = stack.enter_context(tmp.open("w", encoding="utf-8"))
            yield files
            if not files.dialogues:
                raise _NoRows  # an empty file a trainer would fail on is no file
    except _NoRows:
        pass
