"""AGPNet's perturbation branch and training pieces (spec agpnet §2–3): the epoch schedules, the
mean-teacher update, the attention-region mask, the losses and distances, the few-shot augmentation.
Tags as in :mod:`sowa_lib.methods.agpnet`: [P] paper, [V] ViTAD, [?] our choice.

Epochs are 1-based. Every schedule is a function of (epoch, total epochs) with its breakpoints as
fractions of the paper's 500 epochs, so a short demo run keeps the curriculum's shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import InterpolationMode, rotate


def linear_ramp(epoch: int, total_epochs: int, start: float, end: float, low: float, high: float) -> float:
    """``low`` up to epoch ``max(1, start·total)``, ``high`` from epoch ``end·total``, linear between."""
    first, last = max(1.0, start * total_epochs), end * total_epochs
    if last <= first:
        return high if epoch >= last else low
    progress = min(max((epoch - first) / (last - first), 0.0), 1.0)
    return low + (high - low) * progress


def feature_noise_intensity(epoch: int, total_epochs: int) -> float:
    """λ(t): 0 at epoch 1 rising linearly to 1.0 at epoch 400 of 500 [P, §4.1 "Implement Details"]."""
    return linear_ramp(epoch, total_epochs, 0.0, 0.8, 0.0, 1.0)


def image_noise_ratio(epoch: int, total_epochs: int) -> float:
    """r(t): fraction of pixels noised, 0.6 until epoch 100 rising to 1.0 at epoch 400 of 500 [P]."""
    return linear_ramp(epoch, total_epochs, 0.2, 0.8, 0.6, 1.0)


def learning_rate_factor(epoch: int, total_epochs: int, decay_fraction: float = 0.4) -> float:
    """1 for the first 40 % of the epochs, then 0.1 ("reduced by 0.1 after 200 epochs" of 500) [P]."""
    return 1.0 if epoch <= decay_fraction * total_epochs else 0.1


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Mean teacher (eq. 3, Tarvainen & Valpola): ``θ_t ← m·θ_t + (1 − m)·θ_s`` for every parameter."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


def top_ratio_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean mask ``[N, ...]`` keeping exactly ``round(ratio·size)`` highest scores of each sample."""
    flat = scores.flatten(1)
    keep = round(ratio * flat.shape[1])
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, flat.topk(keep, dim=1).indices, True)
    return mask.view_as(scores)


def flat_cosine_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch mean of 1 − cos between whole flattened samples (ViTAD ``CosLoss(flat=True)`` [V])."""
    return (1.0 - F.cosine_similarity(prediction.flatten(1), target.flatten(1), dim=1)).mean()


def token_distance(prediction: torch.Tensor, target: torch.Tensor, metric: str) -> torch.Tensor:
    """Per-token reconstruction error ``[N, T]`` (eq. 8): ``"cosine"`` 1 − cos [V] or ``"l2"``."""
    if metric == "cosine":
        return 1.0 - F.cosine_similarity(prediction, target, dim=-1)
    if metric == "l2":
        return (prediction - target).norm(dim=-1)
    raise ValueError(f"unknown distance {metric!r}; use 'cosine' or 'l2'")


def rotate_flip_augment(images: torch.Tensor, folds: int = 32) -> torch.Tensor:
    """``[K, 3, S, S]`` -> ``[folds·K, 3, S, S]``: the few-shot "32-fold data augmentation (rotate and
    flip)" [P], realised as ``folds/2`` rotations by multiples of ``720°/folds`` (22.5° for 32), each
    with and without a horizontal flip [?]. Corners are filled with 0 (the normalised mean colour) [?]."""
    if folds % 2:
        raise ValueError("folds must be even (rotations × {no flip, flip})")
    views = []
    for angle in torch.arange(folds // 2).mul(720.0 / folds).tolist():
        rotated = rotate(images, angle, interpolation=InterpolationMode.BILINEAR, fill=0.0)
        views += [rotated, rotated.flip(-1)]
    return torch.cat(views)
