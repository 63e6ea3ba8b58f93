"""The paper's setup (BOOST-QA, MASTER arXiv 2506.02689, sections 3-4 and appendix D) as data:
what a run's dataset card compares the run with, and the training settings of the LLaMA-Factory
recipe it writes (flows/publish/trainers/llamafactory.py).

`data/profiles/boostqa.yaml` is this setup as a config; `differences(load_config(profile=
"boostqa"))` lists only what the paper leaves open (tested).
"""

from __future__ import annotations

from typing import Any

from flows.core.config import MasterConfig
from flows.ingest.seeds import quotas

#: The paper's agents: role -> (model, temperature). Qwen2.5-Instruct throughout.
PAPER_AGENTS: dict[str, tuple[str, float]] = {
    "weak": ("Qwen/Qwen2.5-0.5B-Instruct", 0.8),
    "peer": ("Qwen/Qwen2.5-7B-Instruct", 0.6),
    "strong": ("Qwen/Qwen2.5-14B-Instruct", 0.2),
    "judge": ("Qwen/Qwen2.5-32B-Instruct", 0.0),  # the verifier; its temperature is not given
}

#: The seed mix (appendix D.1, read as 5K / 5K / 9K = 19K): source name -> seeds.
PAPER_MIX: dict[str, int] = {"orca_math": 5000, "procqa": 5000, "openhermes": 9000}

#: The benchmarks the paper evaluates on, and the eval-set names that cover each.
PAPER_BENCHMARKS: dict[str, tuple[str, ...]] = {
    "MATH": tuple(
        f"math_{subject}"
        for subject in (
            "algebra",
            "counting_and_probability",
            "geometry",
            "intermediate_algebra",
            "number_theory",
            "prealgebra",
            "precalculus",
        )
    ),
    "MMLU-Pro (math)": ("mmlu_pro",),
    "MBPP": ("mbpp",),
    "HumanEval": ("humaneval",),
    "MMLU": ("mmlu",),
    "ARC": ("arc_challenge", "arc_easy"),
    "SciQ": ("sciq",),
}

#: Appendix D.2: LLaMA-Factory, LoRA, AdamW (its default optimizer).
PAPER_TRAINING: dict[str, Any] = {
    "num_train_epochs": 2.0,
    "learning_rate": 1.0e-4,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 8,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.1,
}

#: What the paper leaves open, and what this project chose (the card says so on every run).
NOT_GIVEN = (
    "scenario proportions (here scenarios.proportions; default a third each)",
    "the analogy retrieval's K (scenarios.retrieval_top_k) and the size of the analogy subset",
    "which ProcQA languages were sampled (the paper-mix profile reads every language file)",
    "the LoRA rank, alpha and target modules and the cutoff length of the recipe "
    "(llamafactory_lora.yaml uses LLaMA-Factory's example values: rank 8, all linear layers, "
    "2048 tokens)",
    "the chat template: the paper fine-tunes base models (LLaMA3-8B, Qwen2.5-7B, Mistral-7B); "
    "the recipe trains the base Meta-Llama-3-8B with LLaMA-Factory's `default` template, "
    "which LLaMA-Factory documents for base models",
)


def _model_matches(model: str, paper_model: str) -> bool:
    """`hosted_vllm/Qwen/Qwen2.5-7B-Instruct` and `ollama_chat/Qwen/Qwen2.5-7B-Instruct` are
    the paper's model; the provider prefix is how it is served, not which model it is."""
    return model.lower().endswith(paper_model.lower())


def differences(cfg: MasterConfig) -> list[str]:
    """Every place this run's setup differs from the paper's, one sentence each."""
    found: list[str] = []
    for role, (paper_model, paper_temp) in PAPER_AGENTS.items():
        lm = cfg.lms.for_role(role)  # type: ignore[arg-type]
        if not _model_matches(lm.model, paper_model):
            found.append(f"the {role} role runs `{lm.model}`; the paper's is {paper_model}")
        if role != "judge" and lm.temperature != paper_temp:
            found.append(
                f"the {role} role samples at temperature {lm.temperature}; the paper's {paper_temp}"
            )
    mix = quotas(cfg.seeds)
    if mix != PAPER_MIX:
        ours = ", ".join(f"{k}: {'every row' if v is None else f'{v:,}'}" for k, v in mix.items())
        found.append(
            f"the seeds are {ours}; the paper's are 5,000 Orca-Math, 5,000 ProcQA and 9,000 "
            "OpenHermes-2.5 (19,000)"
        )
    if cfg.scenarios.analogy_pool != "seeds":
        found.append(
            "analogy partners come from a reservoir of every loaded row; in the paper, from "
            "the run's seeds that are not analogy seeds (scenarios.analogy_pool: seeds)"
        )
    if cfg.merge.mode != "replace":
        found.append("original QA rows are mixed in (merge.mode: mix); the paper replaces them")
    if cfg.merge.backfill == "none":
        found.append(
            "rejected dialogues are not replaced, so the dataset is smaller than its seed set; "
            "the paper's is equal-sized (merge.backfill: resimulate)"
        )
    elif cfg.merge.backfill == "original":
        found.append(
            "seeds whose dialogue was rejected are published as their original QA; the paper "
            "publishes dialogues only (merge.backfill: resimulate)"
        )
    if cfg.merge.replace_with_original:
        found.append(
            "an ablation: the "
            + ", ".join(cfg.merge.replace_with_original)
            + " seeds are published as their original QA (merge.replace_with_original)"
        )
    if not (cfg.quality.enabled and cfg.quality.judge):
        found.append("no verifier judged the dialogues; the paper's 32B verifier filters them")
    proportions = cfg.scenarios.proportions
    off = [s for s in ("error_correction", "debate", "analogy") if proportions.get(s, 0) <= 0]
    if off:
        found.append(f"scenarios left out: {', '.join(off)}; the paper uses all three")
    labels = {ref.label for ref in cfg.seeds.decontamination.eval_sets}
    missing = [name for name, needs in PAPER_BENCHMARKS.items() if not set(needs) <= labels]
    if missing:
        found.append(
            f"the seeds are not decontaminated against {', '.join(missing)} (benchmarks the "
            "paper evaluates on)"
        )
    if cfg.publish.flawed_turns == "mask":
        found.append(
            "the deliberately imperfect turns are left out of the loss in every training file "
            "(publish.flawed_turns: mask); the paper does not say it masks them, and its "
            "ShareGPT data trains every assistant turn"
        )
    return found
