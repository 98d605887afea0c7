"""The BGE-M3 network: the one module that imports torch and transformers.

They are optional (the ``worker`` extra), imported when this module is, and this
module is imported only when a worker boots (to choose its device, then load the
verified model), never at ``import worker``. The model is read from a *verified view*: a private folder of
symlinks to exactly the manifest's files, so nothing the manifest does not pin
(a stray ``model.safetensors`` beside a pinned ``pytorch_model.bin``) can be
picked up by ``from_pretrained``.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

try:  # optional-import seam (infinity_emb style): the API install has no torch
    import numpy as np
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import AutoModel, AutoTokenizer
except ImportError as exc:  # pragma: no cover - exercised only on an API-only install
    torch = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

from worker.device import Placement

HEAD_FILES = ("colbert_linear.pt", "sparse_linear.pt")
"""The two BGE-M3 heads; FlagEmbedding silently uses random heads when one is missing, we refuse."""

SPECIAL_TOKEN_KINDS = ("cls_token", "eos_token", "pad_token", "unk_token")
"""Token kinds FlagEmbedding drops from lexical weights."""


def require_torch() -> None:
    if _IMPORT_ERROR is not None:
        raise RuntimeError("the worker needs torch and transformers: pip install -e '.[worker]'"
                           f" ({_IMPORT_ERROR})")


@dataclass
class BatchOutput:
    """Host (numpy) outputs of one forward pass; absent outputs are None."""
    dense: Any = None     # [B, d]
    weights: Any = None   # [B, L] token weights (relu of the sparse head)
    colbert: Any = None   # [B, L-1, d], CLS dropped, padding rows zero (float16 from an fp16 model)
    ids: Any = None       # [B, L] int64 input ids, padded with the pad id


FD_LINKS = Path("/proc/self/fd")
"""Where Linux shows this process's open descriptors as links that open the very file each holds."""


def verified_view(model_dir: Path, paths: Sequence[str], handles: Mapping[str, int] | None = None) -> Path:
    """A fresh folder holding symlinks to exactly ``paths`` inside ``model_dir``: no unpinned file
    beside them can be picked up. With ``handles`` (the gate's open descriptors, by path) and
    Linux's ``/proc``, each link points at the descriptor, so the loader reads the bytes that were
    hashed even if a file is renamed over the path after verification; else at the path."""
    view = Path(tempfile.mkdtemp(prefix="bge-m3-verified-"))
    by_fd = bool(handles) and FD_LINKS.is_dir()
    for rel in paths:
        if by_fd and rel in handles:
            target = FD_LINKS / str(handles[rel])
        else:
            target = Path(os.path.realpath(Path(model_dir) / rel))
        link = view / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    return view


class M3Model:
    """Tokenizer, transformer and the two heads, on one device, in inference mode."""

    def __init__(self, folder: Path, placement: Placement, colbert_half: bool = True):
        require_torch()
        transformers.logging.set_verbosity_error()
        self.placement = placement
        dtype = placement.torch_dtype(torch)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        # A private backend copy with truncation/padding off, set once here: encode_batch
        # then only borrows it immutably, so task threads can tokenize concurrently
        # (changing truncation per call raises "Already borrowed" under threads).
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.backend.no_truncation()
        self.backend.no_padding()
        # The same ids without character offsets (tokenizers >= 0.20.2): a third less CPU for a
        # 2,000-text job (88 ms against 135 ms on the 2-core VM), which a GPU's host must spare.
        self._encode_batch = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        self.pad_id = int(tokenizer.pad_token_id)
        self.special_ids = frozenset(
            int(tokenizer.convert_tokens_to_ids(tokenizer.special_tokens_map[kind]))
            for kind in SPECIAL_TOKEN_KINDS if kind in tokenizer.special_tokens_map)
        self.backbone = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=dtype,
                                                  add_pooling_layer=False)
        hidden = int(self.backbone.config.hidden_size)
        self.hidden = hidden
        self.vocab = int(self.backbone.config.vocab_size)
        self.max_positions = int(self.backbone.config.max_position_embeddings) - 2
        self.colbert = self._head(folder / "colbert_linear.pt", hidden, hidden, dtype)
        self.colbert_half = colbert_half  # BGE_M3_COLBERT_DTYPE=float16: copy ColBERT out as fp16
        self.sparse = self._head(folder / "sparse_linear.pt", hidden, 1, dtype)
        for module in (self.backbone, self.colbert, self.sparse):
            module.to(placement.device).eval()

    @staticmethod
    def _head(path: Path, hidden: int, out: int, dtype: Any) -> Any:
        state = torch.load(path, map_location="cpu", weights_only=True)
        head = torch.nn.Linear(hidden, out, dtype=dtype)
        head.load_state_dict(state)
        return head

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with CLS/EOS, untruncated (the caller truncates or refuses)."""
        return [enc.ids for enc in self._encode_batch(list(texts), add_special_tokens=True)]

    @property
    def asynchronous(self) -> bool:
        """Whether ``launch`` returns before the pass is done (CUDA queues the work; a CPU runs it)."""
        return self.placement.device.startswith("cuda")

    def forward(self, rows: Sequence[Sequence[int]], dense: bool, sparse: bool,
                colbert: bool) -> BatchOutput:
        """One forward pass of the transformer plus the requested heads, as FlagEmbedding's M3."""
        return self.launch(rows, dense, sparse, colbert).wait()

    def launch(self, rows: Sequence[Sequence[int]], dense: bool, sparse: bool,
               colbert: bool) -> "Launched":
        """``forward``, returning as soon as the pass is queued: on CUDA the outputs are copied
        into pinned host memory by the copy engine while the host goes on (the batcher prepares
        and queues the next pass meanwhile); ``wait()`` on the result blocks until they are there."""
        lengths = [len(r) for r in rows]
        width = max(lengths)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        pinned = self.asynchronous
        with torch.inference_mode():
            input_ids = torch.from_numpy(ids).to(self.placement.device, non_blocking=True)
            attention = torch.from_numpy(mask).to(self.placement.device, non_blocking=True)
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention,
                                   return_dict=True).last_hidden_state
            out = BatchOutput(ids=ids)
            if dense:
                out.dense = _host(F.normalize(hidden[:, 0], dim=-1), pinned=pinned)
            if sparse:
                out.weights = _host(torch.relu(self.sparse(hidden)).squeeze(-1), pinned=pinned)
            if colbert:
                # As FlagEmbedding: its float32 mask widens the head's fp16 output, so the vectors
                # are normalised in float32 (in fp16 they came out up to two fp16 steps off).
                vecs = F.normalize(self.colbert(hidden[:, 1:]) * attention[:, 1:, None].float(), dim=-1)
                if self.colbert_half and hidden.dtype != torch.float32:
                    vecs = vecs.half()  # stored as float16: the copy to the host is half the bytes
                out.colbert = _host(vecs, keep_half=True, pinned=pinned)
            done = None
            if pinned:  # on the placement's stream: a thread's current device is cuda:0 by default
                done = torch.cuda.Event()
                done.record(torch.cuda.current_stream(input_ids.device))
        return Launched(out, done)


@dataclass
class Launched:
    """A queued pass: its host outputs are valid once ``done`` (a CUDA event, or None) has passed."""
    out: BatchOutput
    done: Any = None

    def wait(self) -> BatchOutput:
        if self.done is not None:
            self.done.synchronize()  # releases the GIL while the device finishes
        return self.out


def _host(tensor: Any, keep_half: bool = False, pinned: bool = False) -> Any:
    """To numpy float32; with ``keep_half`` an fp16 tensor crosses to the host as fp16 (ColBERT is
    stored as float16 by default, so widening it on the GPU would only double the copy). With
    ``pinned`` (CUDA) the copy is queued into page-locked memory from torch's caching host
    allocator: a DMA with no host CPU and no page faults, where ``.cpu()`` would make the host
    copy each byte into freshly mapped pageable memory; the block returns to the cache when the
    last view of it (a row's vectors, until streamed to Redis) is gone."""
    if not (keep_half and tensor.dtype == torch.float16):
        tensor = tensor.float()
    if not pinned:
        return tensor.cpu().numpy()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host.numpy()


def torch_threads(wanted: int = 0) -> int:
    """Set torch's CPU threads when ``wanted`` > 0; return the count in force."""
    require_torch()
    if wanted > 0:
        torch.set_num_threads(wanted)
    return torch.get_num_threads()
