"""Tensor pieces shared by the tap adapters that turn a frozen backbone into AGPNet's extractor
(:class:`~sowa_lib.backbones.dino.DinoTaps`, :class:`~sowa_lib.backbones.clip.ClipTaps`,
:class:`~sowa_lib.backbones.cnn.CnnTaps`; spec agpnet §1–2)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def layer_norm_sum(taps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 1 of AGPNet: ``Σ_l LN(f_l)`` over equally wide token maps ``[N, T, C]`` [P]. The LayerNorms
    carry no affine parameters [?]: the target must stay fixed, a learnable scale could shrink it to zero."""
    return torch.stack([F.layer_norm(t, t.shape[-1:]) for t in taps]).sum(0)


def minmax_per_sample(values: torch.Tensor) -> torch.Tensor:
    """Norm(·) of AGPNet eq. 4: each sample (first dim) rescaled to [0, 1]; constant samples become 0."""
    flat = values.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    span = high - low
    return torch.where(span > 0, (flat - low) / span.clamp_min(1e-12), torch.zeros_like(flat)).view_as(values)
