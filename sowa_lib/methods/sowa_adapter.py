"""SOWA's hierarchical frozen window attention (HFWA) adapter (spec sowa §1.3).

One adapter per tapped CLIP layer. Each is a Swin-V2-style stage whose attention reuses the frozen
weights of the tapped CLIP block (``in_proj_weight`` without its bias, and ``out_proj`` with its
bias), regrouped into ``num_heads`` heads, with cosine attention (value-value by default), a
learnable per-head logit scale and a Swin-V2 continuous relative position bias. Residuals are
post-norm, and a bias-free ``Linear(width, width)`` branch follows the attention.

Fig. 2(b, c) of the paper draws a simpler block; :class:`WindowOptions` holds a switch for each piece
the figure leaves out or draws differently (spec §5.4.4), with the code's behaviour as the default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sowa_lib.methods.base import check_choice

LOGIT_SCALE_INIT = math.log(10.0)
LOGIT_SCALE_MAX = math.log(100.0)
CPB_LOG_BASE = 8.0  # Swin-V2: coordinates scaled to [-8, 8], then log-spaced
CPB_BIAS_RANGE = 16.0  # Swin-V2: bias = 16 * sigmoid(mlp(coords))
TABLE_INIT_STD = 0.02  # Swin-V1: learnable relative position bias table ~ trunc_normal(std 0.02)
LOGIT_SCALES = ("learned", "fixed")
POSITION_BIASES = ("continuous", "table", "none")


@dataclass(frozen=True)
class WindowOptions:
    """What every HFWA block of a SOWA model shares (spec sowa §1.3; ``model/sowa_hfwa.yaml``).

    ``value_only``: cos(v, v) logits (SOWA) or cos(q, k). Fidelity switches (spec §5.4.4; the
    code's behaviour is each default, Fig. 2(b, c) the alternative):

    - ``in_proj_bias``: add CLIP's in_proj bias back (the code leaves it out).
    - ``linear_residual``: the Linear branch is added to its input (code) or replaces it (Fig. 2(b)).
    - ``logit_scale``: ``"learned"`` per-head scale, init 10, clamped at 100 (code), or ``"fixed"``
      at 10 and not trained (Fig. 2(c) draws no scale).
    - ``position_bias``: ``"continuous"`` (Swin-V2 MLP, code), ``"table"`` (a learnable Swin-V1
      table, Fig. 2(c)'s "learnable relative position bias") or ``"none"``.
    - ``out_proj``: the frozen CLIP ``out_proj`` after the attention (code) or none (not drawn).
    """

    num_heads: int = 8
    cpb_hidden: int = 64
    value_only: bool = True
    attn_drop: float = 0.1
    in_proj_bias: bool = False
    linear_residual: bool = True
    logit_scale: str = "learned"
    position_bias: str = "continuous"
    out_proj: bool = True

    def __post_init__(self) -> None:
        check_choice("logit_scale", self.logit_scale, LOGIT_SCALES)
        check_choice("position_bias", self.position_bias, POSITION_BIASES)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, H, W, C]`` -> ``[B * nW, window * window, C]``; windows row-major, tokens row-major inside."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B * nW, window * window, C]`` -> ``[B, H, W, C]``."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def relative_coords_table(window: int) -> torch.Tensor:
    """Swin-V2 log-spaced relative coordinates, ``[(2w-1)^2, 2]`` (spec sowa §1.3, step 3).

    Offsets Δ ∈ {-(w-1)..w-1}² are divided by (w-1), multiplied by 8 and mapped to
    sign(t)·log2(1+|t|)/log2(8). Rows are ordered (Δh, Δw) row-major.
    """
    offsets = torch.arange(-(window - 1), window, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1).reshape(-1, 2)
    if window > 1:
        table = table / (window - 1) * CPB_LOG_BASE
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(CPB_LOG_BASE)


def relative_position_index(window: int) -> torch.Tensor:
    """``[N, N]`` (N = window²) index of each token pair's offset into :func:`relative_coords_table`."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    delta = (coords[:, :, None] - coords[:, None, :]) + (window - 1)  # [2, N, N], shifted to >= 0
    return delta[0] * (2 * window - 1) + delta[1]


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor | None:
    """Swin's additive mask ``[nW, N, N]`` (0 or -100) that keeps cyclically shifted windows from
    attending across the wrap-around seams; ``None`` without a shift."""
    if shift == 0:
        return None
    regions = torch.zeros(1, height, width, 1)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for label, (rows, cols) in enumerate((r, c) for r in bands for c in bands):
        regions[:, rows, cols, :] = label
    labels = window_partition(regions, window).squeeze(-1)  # [nW, N]
    different = labels[:, None, :] != labels[:, :, None]
    return different.float() * -100.0


def gather_relative_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-offset table ``[(2w-1)^2, heads]`` -> per-token-pair bias ``[heads, N, N]`` (Swin)."""
    n = index.shape[0]
    return table[index.reshape(-1)].view(n, n, -1).permute(2, 0, 1)


class ContinuousPositionBias(nn.Module):
    """Swin-V2 continuous relative position bias: MLP 2 -> ``hidden`` -> heads, then 16·sigmoid.

    :meth:`forward` returns the per-head bias ``[heads, N, N]`` for one ``window``×``window`` window.
    """

    def __init__(self, window: int, num_heads: int, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, hidden, bias=True), nn.ReLU(inplace=True), nn.Linear(hidden, num_heads, bias=False))
        self.register_buffer("coords_table", relative_coords_table(window), persistent=False)
        self.register_buffer("index", relative_position_index(window), persistent=False)

    def table(self) -> torch.Tensor:
        """The MLP output over all offsets, ``[(2w-1)^2, heads]`` (before gathering and the sigmoid)."""
        return self.mlp(self.coords_table)

    def forward(self) -> torch.Tensor:
        return CPB_BIAS_RANGE * torch.sigmoid(gather_relative_bias(self.table(), self.index))


class RelativePositionBiasTable(nn.Module):
    """Swin-V1 learnable relative position bias: one value per offset and head, ``[(2w-1)^2, heads]``,
    init trunc_normal(std 0.02); :meth:`forward` returns ``[heads, N, N]``."""

    def __init__(self, window: int, num_heads: int) -> None:
        super().__init__()
        self.table = nn.Parameter(nn.init.trunc_normal_(torch.empty((2 * window - 1) ** 2, num_heads), std=TABLE_INIT_STD))
        self.register_buffer("index", relative_position_index(window), persistent=False)

    def forward(self) -> torch.Tensor:
        return gather_relative_bias(self.table, self.index)


def position_bias_module(kind: str, window: int, num_heads: int, hidden: int) -> nn.Module | None:
    """The position bias of ``WindowOptions.position_bias`` (None for ``"none"``)."""
    if kind == "continuous":
        return ContinuousPositionBias(window, num_heads, hidden)
    return RelativePositionBiasTable(window, num_heads) if kind == "table" else None


class FrozenWindowAttention(nn.Module):
    """Cosine window attention over the frozen CLIP projections (spec sowa §1.3, step 3).

    ``attn`` is the tapped CLIP block's ``nn.MultiheadAttention``; it is held by reference (its
    weights stay shared and frozen). Its ``in_proj_weight`` is applied *without* its bias and the
    ``width`` channels are regrouped into ``num_heads`` heads (8×128 for ViT-L instead of CLIP's
    16×64). ``value_only=True`` (SOWA) uses cos(v, v) logits; ``False`` uses cos(q, k).
    The other :class:`WindowOptions` switches drop or replace the logit scale, the position bias
    and ``out_proj``.
    """

    def __init__(self, attn: nn.MultiheadAttention, window: int, options: WindowOptions = WindowOptions()) -> None:
        super().__init__()
        width = attn.embed_dim
        if width % options.num_heads:
            raise ValueError(f"width {width} is not divisible by {options.num_heads} heads")
        self.frozen_attn = attn
        self.num_heads = options.num_heads
        self.value_only = options.value_only
        self.use_in_proj_bias = options.in_proj_bias
        self.use_out_proj = options.out_proj
        scale = torch.full((options.num_heads, 1, 1), LOGIT_SCALE_INIT)
        if options.logit_scale == "learned":
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale, persistent=False)
        self.position_bias = position_bias_module(options.position_bias, window, options.num_heads, options.cpb_hidden)
        self.attn_drop = nn.Dropout(options.attn_drop)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``windows``: ``[B * nW, N, C]`` -> ``[B * nW, N, C]``; ``mask``: ``[nW, N, N]`` or None."""
        bw, n, c = windows.shape
        weight = self.frozen_attn.in_proj_weight
        bias = self.frozen_attn.in_proj_bias if self.use_in_proj_bias else None  # the code drops it (§5.4.4)
        if self.value_only:  # q and k would be computed and ignored: project the V rows only
            weight, bias = weight[2 * c :], None if bias is None else bias[2 * c :]
        heads = F.linear(windows, weight, bias).view(bw, n, -1, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        v = heads[-1]
        left, right = (v, v) if self.value_only else (heads[0], heads[1])
        logits = F.normalize(left, dim=-1) @ F.normalize(right, dim=-1).transpose(-2, -1)
        logits = logits * torch.clamp(self.logit_scale, max=LOGIT_SCALE_MAX).exp()
        if self.position_bias is not None:
            logits = logits + self.position_bias().unsqueeze(0)
        if mask is not None:
            n_windows = mask.shape[0]
            logits = logits.view(bw // n_windows, n_windows, self.num_heads, n, n) + mask[None, :, None]
            logits = logits.view(bw, self.num_heads, n, n)
        weights = self.attn_drop(logits.softmax(dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(bw, n, c)
        return self.frozen_attn.out_proj(out) if self.use_out_proj else out


class FrozenWindowBlock(nn.Module):
    """One HFWA block: (shifted) window partition -> FWA -> reverse -> post-norm residual, then a
    post-norm residual bias-free Linear branch (spec sowa §1.3, steps 1–6).

    ``linear_residual=False`` follows Fig. 2(b) instead of the code: the block ends with
    LN(Linear(x1)), without the second residual (fidelity switch, spec §5.4.4).
    """

    def __init__(self, attn: nn.MultiheadAttention, grid: int, window: int, shift: int = 0, options: WindowOptions = WindowOptions()) -> None:
        super().__init__()
        if grid % window:
            raise ValueError(f"window {window} does not divide the {grid}x{grid} token grid")
        width = attn.embed_dim
        self.grid, self.window, self.shift = grid, window, shift
        self.linear_residual = options.linear_residual
        self.attention = FrozenWindowAttention(attn, window, options)
        self.norm1 = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width, bias=False)
        self.norm2 = nn.LayerNorm(width)
        mask = shifted_window_mask(grid, grid, window, shift)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, grid², C]`` -> ``[B, grid², C]``."""
        b, t, c = tokens.shape
        x = tokens.view(b, self.grid, self.grid, c)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        attended = self.attention(window_partition(x, self.window), self.mask)
        x = window_reverse(attended, self.window, self.grid, self.grid)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = tokens + self.norm1(x.reshape(b, t, c))
        branch = self.norm2(self.linear(x))
        return x + branch if self.linear_residual else branch


class HFWAAdapter(nn.Module):
    """A stage of ``depth`` :class:`FrozenWindowBlock` s tied to one CLIP block's attention.

    As in Swin, odd-indexed blocks shift by window/2; a window at least as large as the grid becomes
    one global window with no shift. ``depth=1`` (SOWA) has no shifted block.
    """

    def __init__(self, attn: nn.MultiheadAttention, grid: int, window: int = 12, depth: int = 1, options: WindowOptions = WindowOptions()) -> None:
        super().__init__()
        window = min(window, grid)
        shifts = [0 if i % 2 == 0 or window == grid else window // 2 for i in range(depth)]
        self.blocks = nn.ModuleList(
            FrozenWindowBlock(attn, grid, window, shift, options)
            for shift in shifts
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return tokens


def share_trainable_parts(adapters: list[HFWAAdapter]) -> None:
    """Tie every adapter's learnable parts (logit scale, position bias, LayerNorms, Linear) to the
    first adapter's, block by block; each keeps its own layer's frozen attention. This is the
    config's ``share_weight: true`` taken literally; the reference code ignores it (spec §5.4.3)."""
    first = adapters[0]
    for adapter in adapters[1:]:
        for block, shared in zip(adapter.blocks, first.blocks, strict=True):
            block.norm1, block.linear, block.norm2 = shared.norm1, shared.linear, shared.norm2
            block.attention.logit_scale = shared.attention.logit_scale
            block.attention.position_bias = shared.attention.position_bias
