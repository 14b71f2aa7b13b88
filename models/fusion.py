"""SAVE's new transformers: the audio resampler and the gated fusion transformer.

Leaf module names (``attn``, ``ln_1``, ``mlp.c_fc``, ``cross_ff.cross_fc``, ``attn_gate.ag_fc`` ...)
deliberately equal the authors' (save-reference.md §1.1), so their checkpoints map by a prefix rename
and their CLIP-text initialisation (§1.5) applies unchanged. Tensors are batch-first here; the
authors' code is sequence-first, which computes the same thing.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

# The authors' new modules use a hand-written "TF-style" LayerNorm with eps 1e-12 (§1.1, §6.8);
# nn.LayerNorm with that eps is the same formula (biased variance).
FUSION_LN_EPS = 1e-12


class QuickGELU(nn.Module):
    """CLIP's activation, x * sigmoid(1.702 x), used in every new block as in the authors' code."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def _layer_norm(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, eps=FUSION_LN_EPS)


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            c_fc=nn.Linear(width, width * 4),
            gelu=QuickGELU(),
            c_proj=nn.Linear(width * 4, width),
        )
    )


class ResamplerBlock(nn.Module):
    """Self-attention over the queries, cross-attention to the audio tokens, MLP (reference §2.3).

    The same ``ln_3`` normalises the queries and the audio memory: that is what the authors do.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = _layer_norm(width)
        self.mlp = _mlp(width)
        self.ln_2 = _layer_norm(width)
        self.ln_3 = _layer_norm(width)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        q, m = self.ln_3(x), self.ln_3(memory)
        x = x + self.cross_attn(q, m, m, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class AudioResampler(nn.Module):
    """Turns a variable number of audio-encoder tokens into ``num_queries`` audio tokens."""

    def __init__(self, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResamplerBlock(width, heads) for _ in range(layers))

    def forward(self, queries: Tensor, memory: Tensor) -> Tensor:
        x = queries
        for block in self.resblocks:
            x = block(x, memory)
        return x  # no final LayerNorm, as in the authors' code


class _Gate(nn.Module):
    """tanh(proj(QuickGELU(fc([mean frames; mean memory])))): one scalar per video per layer."""

    def __init__(self, width: int, prefix: str) -> None:
        super().__init__()
        hidden = width // 2
        self.add_module(f"{prefix}_fc", nn.Linear(2 * width, hidden, bias=False))
        self.add_module(f"{prefix}_gelu", QuickGELU())
        self.add_module(f"{prefix}_proj", nn.Linear(hidden, 1, bias=False))
        self._prefix = prefix

    def forward(self, gate_input: Tensor) -> Tensor:
        fc, gelu, proj = (getattr(self, f"{self._prefix}_{n}") for n in ("fc", "gelu", "proj"))
        return torch.tanh(proj(gelu(fc(gate_input))))


class _CrossFeedForward(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.cross_fc = nn.Linear(width, width * 4, bias=False)
        self.cross_gelu = QuickGELU()
        self.cross_proj = nn.Linear(width * 4, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.cross_proj(self.cross_gelu(self.cross_fc(x)))


class GatedFusionBlock(nn.Module):
    """Flamingo/AVIGATE-style block: gated cross-attn -> gated cross-FFN -> self-attn -> MLP (§2.5).

    Deliberate code-faithful choices (reference §6.2-6.3): both gates come from the block input;
    keys and values are the raw memory (no LayerNorm); frame self-attention is unmasked; the
    authors' cross-attention "mask" offsets whole query rows and so cancels in softmax, hence none here.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        # Registration order follows the authors' so state-dict order matches theirs.
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = _layer_norm(width)
        self.mlp = _mlp(width)
        self.ln_2 = _layer_norm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross_ff = _CrossFeedForward(width)
        self.attn_gate = _Gate(width, "ag")
        self.ff_gate = _Gate(width, "fg")
        self.ln_3 = _layer_norm(width)
        self.ln_4 = _layer_norm(width)

    def forward(self, x: Tensor, memory: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # Gate means include padded frames and padded speech tokens, as in the authors' code.
        gate_input = torch.cat([x.mean(dim=1), memory.mean(dim=1)], dim=-1)
        attn_gate = self.attn_gate(gate_input)[:, :, None]  # [B, 1, 1]
        ff_gate = self.ff_gate(gate_input)[:, :, None]
        x = x + attn_gate * self.cross_attn(self.ln_3(x), memory, memory, need_weights=False)[0]
        x = x + ff_gate * self.cross_ff(self.ln_4(x))
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.ln_2(x))
        return x, attn_gate.flatten(), ff_gate.flatten()


class GatedFusionTransformer(nn.Module):
    """Frames attend to a memory (audio or speech tokens) through ``layers`` gated blocks."""

    def __init__(self, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(GatedFusionBlock(width, heads) for _ in range(layers))

    def forward(self, frames: Tensor, memory: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns the fused frames [B, T, D] and the per-layer gates [B, layers] (attention, FFN)."""
        attn_gates, ff_gates = [], []
        x = frames
        for block in self.resblocks:
            x, ag, fg = block(x, memory)
            attn_gates.append(ag)
            ff_gates.append(fg)
        return x, torch.stack(attn_gates, dim=1), torch.stack(ff_gates, dim=1)
