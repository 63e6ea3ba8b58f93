"""What the trainers themselves make of a run's training files: run with the LLaMA-Factory
environment's Python (.venv-llamafactory, built by `make llamafactory`), never imported by the
tests. Each command writes JSON for tests/system/test_trainers.py to compare with what the
files mean.

  convert GGUF DIR                 the bundled SmolLM2 GGUF as a transformers folder (model
                                   dequantized, tokenizer), which LLaMA-Factory loads
  llamafactory FOLDER MODEL OUT CUTOFF...
                                   LLaMA-Factory's own data pipeline on FOLDER's recipe and
                                   dataset_info.json, once per cutoff_len: each row's
                                   input_ids and labels
  trl FOLDER MODEL OUT             TRL's SFTTrainer dataset preparation and collator on
                                   FOLDER's prompt_completion.jsonl: each row's input_ids and
                                   labels
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import yaml


def convert(gguf: str, folder: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, name = os.path.split(gguf)
    AutoTokenizer.from_pretrained(where, gguf_file=name).save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name)
    model.save_pretrained(folder)


def llamafactory(folder: str, model: str, out: str, *cutoffs: str) -> None:
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    os.chdir(folder)  # where the recipe runs from: dataset_dir "."
    recipe = yaml.safe_load(Path("llamafactory_lora.yaml").read_text())
    found: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for cutoff in cutoffs:
            args = {**recipe, "model_name_or_path": model, "output_dir": scratch,
                    "cutoff_len": int(cutoff), "bf16": False, "plot_loss": False,
                    "preprocessing_num_workers": None,
                    "report_to": "none"}  # fmt: skip
            model_args, data_args, training_args, *_ = get_train_args(args)
            tokenizer_module = load_tokenizer(model_args)
            template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
            dataset = get_dataset(
                template, model_args, data_args, training_args, "sft", **tokenizer_module
            )["train_dataset"]
            tokenizer = tokenizer_module["tokenizer"]
            found["eos"] = tokenizer.eos_token
            found[cutoff] = [
                {"input_ids": row["input_ids"], "labels": row["labels"],
                 "labelled": tokenizer.decode([t for t in row["labels"] if t != -100])}
                for row in dataset
            ]  # fmt: skip
    Path(out).write_text(json.dumps(found))


def trl(folder: str, model: str, out: str) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model)
    dataset = load_dataset("json", data_files=str(Path(folder) / "prompt_completion.jsonl"))
    with tempfile.TemporaryDirectory() as scratch:
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(model),
            args=SFTConfig(output_dir=scratch, report_to="none", max_length=None, bf16=False),
            train_dataset=dataset["train"],
            processing_class=tokenizer,
        )
        rows = list(trainer.train_dataset)
        found = []
        for row in rows:
            batch = trainer.data_collator([row])
            labels = batch["labels"][0].tolist()
            labelled = tokenizer.decode([t for t in labels if t != -100])
            found.append({"input_ids": row["input_ids"], "labels": labels, "labelled": labelled})
    Path(out).write_text(json.dumps(found))


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    {"convert": convert, "llamafactory": llamafactory, "trl": trl}[command](*arguments)
