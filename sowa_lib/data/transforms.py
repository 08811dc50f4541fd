"""From samples to the normalised tensors every method's ``predict`` takes.

All methods resize the full image to a square (no aspect ratio kept, no crop) as April-GAN, SOWA and
anomalib's WinCLIP do (spec april_gan_winclip_peers §1.1, sowa §1.1), bicubic unless the method
declares another ``interpolation`` (AGPNet: ViTAD's bilinear, datasets_metrics §1.5); masks are resized bilinearly
(antialiased, as PIL) and thresholded at 0.5 (sowa §3.1, datasets_metrics §3.3).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sowa_lib.data.sample import Sample

NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def image_to_tensor(image: np.ndarray, size: int, normalization: str = "clip", interpolation: str = "bicubic") -> torch.Tensor:
    """RGB uint8 ``[H, W, 3]`` -> normalised float ``[3, size, size]`` (``"bicubic"`` or ``"bilinear"``, antialiased)."""
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"interpolation={interpolation!r}; choose 'bicubic' or 'bilinear'")
    mean, std = NORMALIZATION[normalization]
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
    x = F.interpolate(x, size=(size, size), mode=interpolation, align_corners=False, antialias=True)
    x = x.clamp(0.0, 1.0)[0]
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def mask_to_tensor(mask: np.ndarray, size: int, threshold: float = 0.5) -> torch.Tensor:
    """Boolean ``[H, W]`` -> boolean ``[size, size]``: bilinear resize as the references do it, then
    ``> threshold`` (0.5 at test time; SOWA's training masks use ``> 0``, sowa §2.2).

    The references resize a PIL 'L' mask (torchvision ``Resize`` -> PIL bilinear), which antialiases
    when shrinking and stores each of its two passes (horizontal, then vertical) as uint8. Both
    matter for ``> 0``: without the antialiasing a 1024 -> 336 mask loses most of the reference's
    dilated rim; without the uint8 levels, tiny positive weights add pixels the reference drops.
    """
    x = torch.from_numpy(mask.astype(np.float32))[None, None]
    x = _as_uint8_levels(F.interpolate(x, size=(x.shape[-2], size), mode="bilinear", align_corners=False, antialias=True))
    x = _as_uint8_levels(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True))
    return x[0, 0] > threshold


def _as_uint8_levels(x: torch.Tensor) -> torch.Tensor:
    """Round values in [0, 1] to the nearest of the 256 levels a uint8 image can hold (half up, as PIL)."""
    return torch.floor(x * 255.0 + 0.5) / 255.0


def load_images(samples: Sequence[Sample], size: int, normalization: str = "clip", interpolation: str = "bicubic") -> torch.Tensor:
    """``[N, 3, size, size]`` normalised images of ``samples`` (a method's ``interpolation``)."""
    if not samples:
        return torch.empty(0, 3, size, size)
    return torch.stack([image_to_tensor(s.read_image(), size, normalization, interpolation) for s in samples])


def load_masks(samples: Sequence[Sample], size: int) -> torch.Tensor:
    """``[N, size, size]`` boolean ground-truth masks of ``samples``."""
    if not samples:
        return torch.empty(0, size, size, dtype=torch.bool)
    return torch.stack([mask_to_tensor(s.read_mask(), size) for s in samples])
