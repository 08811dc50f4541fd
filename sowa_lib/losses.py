"""Segmentation losses of April-GAN and SOWA: focal and binary Dice on softmax probabilities.

Both reference codes share one ``loss.py`` (spec april_gan_winclip_peers §1.7; sowa §2.2); the
constants below are theirs.
"""
from __future__ import annotations

import torch

FOCAL_SMOOTH = 1e-5
DICE_SMOOTH = 1.0


def focal_loss(probabilities: torch.Tensor, masks: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss on already-softmaxed 2-class maps (§1.7; α = None, i.e. unit class weights).

    probabilities: ``[B, 2, H, W]`` (channel 1 = abnormal); masks: ``[B, H, W]`` in {0, 1}.
    One-hot targets clamped to ``[1e-5, 1 - 1e-5]``; ``pt = Σ_c onehot_c · p_c + 1e-5``;
    mean over all pixels of ``-(1 - pt)^γ · log pt``.
    """
    target = masks.long().clamp(0, 1)
    one_hot = torch.stack([1 - target, target], dim=1).to(probabilities.dtype)
    one_hot = one_hot.clamp(FOCAL_SMOOTH, 1.0 - FOCAL_SMOOTH)
    pt = (one_hot * probabilities).sum(dim=1) + FOCAL_SMOOTH
    return (-((1.0 - pt) ** gamma) * pt.log()).mean()


def dice_loss(probabilities: torch.Tensor, masks: torch.Tensor, per_row: bool = False) -> torch.Tensor:
    """Binary Dice ``1 - mean_b (2 Σ p·g + 1) / (Σ p + Σ g + 1)`` of ``[B, H, W]`` maps (§1.7).

    ``per_row``: every map row is its own unit, ``1 - mean over the B·H rows`` — what the reference
    computes for a batch of one image, whose mask ``squeeze()`` leaves ``[H, W]`` so that the loss
    reads H as the batch size (April-GAN ``train.py``; issue #18).
    """
    p = probabilities.reshape(-1, probabilities.shape[-1]) if per_row else probabilities.flatten(1)
    g = masks.reshape(p.shape).to(p.dtype)
    dice = (2.0 * (p * g).sum(dim=1) + DICE_SMOOTH) / (p.sum(dim=1) + g.sum(dim=1) + DICE_SMOOTH)
    return 1.0 - dice.mean()
