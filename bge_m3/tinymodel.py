"""A deterministic, randomly initialised, BGE-M3-shaped model folder.

The real weights can never be downloaded in an offline workplace, so tests and
benchmarks build their own: an XLM-R encoder, the ColBERT and sparse heads, and
a BPE tokenizer trained locally. Every byte depends only on the arguments:
weights come from numpy's PCG64 generator (platform independent), files are
written without timestamps, and the tokenizer trainer runs single-threaded.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

TINY_INIT_RANGE = 0.5
"""Weight scale of the tiny model: at the usual 0.02 every text pair has cosine ~1.0."""

SPARSE_BIAS = 1.0
"""Positive bias on the sparse head so most tokens of a short text keep a lexical weight."""

TOKENIZER_VOCAB = 2000
"""Size of the locally trained BPE vocabulary (the tiny model's ``vocab_size`` too)."""

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]
"""XLM-R's special tokens at ids 0-3; ``<mask>`` is appended as the last id."""


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int | None  # None: the tokenizer's own size
    init_range: float


TINY = Shape(hidden=32, layers=2, heads=2, ffn=64, vocab=None, init_range=TINY_INIT_RANGE)
FULL = Shape(hidden=1024, layers=24, heads=16, ffn=4096, vocab=250002, init_range=0.02)


def _corpus(seed: int) -> list[str]:
    """A small multilingual corpus, generated, so the tokenizer sees CJK and Latin text."""
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(seed))
    latin = ("the quick brown fox jumps over lazy dog embedding vector search retrieval "
             "model dense sparse colbert hybrid score query document passage token weather "
             "sunny beautiful today weight index service worker queue redis python hello world "
             "der die das und ist ein nicht le la les et est une pas el los que por para").split()
    cjk = list("今天天气真好阳光明媚我们你他她是的了在有和人这中大为上个国不到说时要就出会可也")
    lines = []
    for _ in range(3000):
        words = [latin[i] for i in rng.integers(0, len(latin), rng.integers(3, 16))]
        hanzi = "".join(cjk[i] for i in rng.integers(0, len(cjk), rng.integers(2, 12)))
        lines.append(" ".join(words) + " " + hanzi)
    return lines


def build_tokenizer(seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    # Single-threaded training: a stable merge order. Restored after, so that processes started
    # from this one (a bench's worker) do not inherit one tokenizer thread.
    before = os.environ.get("RAYON_RS_NUM_CPUS")
    os.environ["RAYON_RS_NUM_CPUS"] = "1"
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB - 1, special_tokens=SPECIAL_TOKENS,
                                  show_progress=False)
    try:
        tok.train_from_iterator(_corpus(seed), trainer=trainer)
    finally:
        if before is None:
            del os.environ["RAYON_RS_NUM_CPUS"]
        else:
            os.environ["RAYON_RS_NUM_CPUS"] = before
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.RobertaProcessing(sep=("</s>", 2), cls=("<s>", 0))
    return tok


def _config(shape: Shape, vocab: int) -> dict:
    return {
        "architectures": ["XLMRobertaModel"],
        "attention_probs_dropout_prob": 0.1,
        "bos_token_id": 0,
        "classifier_dropout": None,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": shape.hidden,
        "initializer_range": shape.init_range,
        "intermediate_size": shape.ffn,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 8194,
        "model_type": "xlm-roberta",
        "num_attention_heads": shape.heads,
        "num_hidden_layers": shape.layers,
        "output_past": True,
        "pad_token_id": 1,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "type_vocab_size": 1,
        "use_cache": True,
        "vocab_size": vocab,
    }


def _fill(name: str, shape: tuple[int, ...], rng, init_range: float):
    import numpy as np

    if name.endswith("LayerNorm.weight"):
        return np.ones(shape, dtype=np.float32)
    if name.endswith(".bias"):
        return np.zeros(shape, dtype=np.float32)
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(init_range))


def _torch_bytes(state: dict) -> bytes:
    import torch

    buf = io.BytesIO()  # a file name would leak into the zip's record prefix
    torch.save(state, buf)
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> None:
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)


def build(out: Path, *, full: bool = False, seed: int = 0) -> Path:
    """Write the model folder ``out`` and its manifest ``out.manifest.json``; return the manifest path."""
    import numpy as np
    import torch
    from safetensors.numpy import save as save_safetensors
    from transformers import XLMRobertaConfig, XLMRobertaModel

    shape = FULL if full else TINY
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o755)

    tok = build_tokenizer(seed)
    vocab = shape.vocab or tok.get_vocab_size()
    config = _config(shape, vocab)
    _write(out / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    _write(out / "tokenizer.json", tok.to_str(pretty=True))
    _write(out / "special_tokens_map.json", json.dumps({
        "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>",
        "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"}, indent=2) + "\n")
    _write(out / "tokenizer_config.json", json.dumps({
        "tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 8192,
        "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>",
        "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>",
        "clean_up_tokenization_spaces": True}, indent=2) + "\n")

    # The meta device gives names and shapes without allocating 2 GB of throwaway weights.
    with torch.device("meta"):
        skeleton = XLMRobertaModel(XLMRobertaConfig(**config))
    rng = np.random.Generator(np.random.PCG64(seed))
    tensors = {}
    for name, param in skeleton.state_dict().items():
        tensors[name] = _fill(name, tuple(param.shape), rng, shape.init_range)
    tensors["embeddings.word_embeddings.weight"][1] = 0.0  # padding_idx row, as nn.Embedding does
    _write(out / "model.safetensors", save_safetensors(tensors, metadata={"format": "pt"}))
    del tensors

    h = shape.hidden
    colbert = {"weight": torch.from_numpy(_fill("w", (h, h), rng, shape.init_range)),
               "bias": torch.zeros(h)}
    sparse = {"weight": torch.from_numpy(_fill("w", (1, h), rng, shape.init_range)),
              "bias": torch.full((1,), SPARSE_BIAS)}
    _write(out / "colbert_linear.pt", _torch_bytes(colbert))
    _write(out / "sparse_linear.pt", _torch_bytes(sparse))

    from verify.manifest import build_manifest, dump_manifest

    manifest_path = out.parent / f"{out.name}.manifest.json"
    manifest = build_manifest(out, repo_id="local/bge-m3-tiny" + ("-full" if full else ""),
                              revision=f"seed-{seed}")
    _write(manifest_path, dump_manifest(manifest))
    return manifest_path
