"""SPADE (Cohen & Hoshen 2020; no official code) as the few-shot tables compare it (spec
datasets_metrics §4.3; shared setup: :mod:`sowa_lib.methods.cnn_baseline`)."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Sequence

import torch

from sowa_lib import ops
from sowa_lib.backbones.cnn import POOLED, TappedCNN
from sowa_lib.methods.base import Prediction
from sowa_lib.methods.cnn_baseline import CNNBaseline, upsampled_concat


def grid_rows(feature_map: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B * h * w, C]`` rows (image-major, then row-major positions)."""
    return feature_map.permute(0, 2, 3, 1).reshape(-1, feature_map.shape[1])


class SPADE(CNNBaseline):
    """SPADE: image score = mean L2 distance of the query's pooled layer4 feature to its ``top_k``
    nearest references (k = 50 in the paper; with K <= 4 references k = min(50, K) = all of them).
    Pixel score: nearest-neighbour distance of each query position to all positions of those
    ``top_k`` references (§4.3), then upsampling and σ = ``smoothing_sigma`` smoothing.

    Fidelity switch ``pyramid``: ``"concatenated"`` (default; the paper's and spec's description:
    the ``taps`` layer1–3 upsampled bilinearly to layer1's grid and concatenated, one NN search) or
    ``"per_layer"`` (the widely used SPADE-pytorch re-implementation: one NN map per layer,
    each upsampled to the input size, averaged).
    """

    name: ClassVar[str] = "spade"
    cached: ClassVar[tuple[str, ...]] = ("reference_pooled", "reference_rows")

    def __init__(
        self,
        *,
        taps: Sequence[str] = ("layer1", "layer2", "layer3"),
        top_k: int = 50,
        pyramid: str = "concatenated",
        backbone: str | TappedCNN = "wide_resnet50_2",
        pretrained: str | None = "IMAGENET1K_V1",
        checkpoint: str | Path | None = None,
        image_size: int = 256,
        smoothing_sigma: float = 4.0,
    ) -> None:
        super().__init__(backbone, pretrained, checkpoint, image_size, smoothing_sigma)
        if pyramid not in ("concatenated", "per_layer"):
            raise ValueError(f"pyramid must be 'concatenated' or 'per_layer', got {pyramid!r}")
        self.taps, self.top_k, self.pyramid = tuple(taps), top_k, pyramid
        self.reference_pooled: torch.Tensor | None = None  # [K, C]
        self.reference_rows: list[torch.Tensor] = []  # per pyramid level [K, h*w, C]

    def pyramid_maps(self, feats: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        maps = [feats[tap] for tap in self.taps]
        return [upsampled_concat(maps, "bilinear")] if self.pyramid == "concatenated" else maps

    def remember(self, images: torch.Tensor) -> None:
        feats = self.features(images, (*self.taps, POOLED))
        self.reference_pooled = feats[POOLED].flatten(1)
        self.reference_rows = [grid_rows(level).reshape(len(images), -1, level.shape[1]) for level in self.pyramid_maps(feats)]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, category: str) -> Prediction:
        if self.reference_pooled is None:
            raise RuntimeError("spade: call set_references first")
        feats = self.features(images, (*self.taps, POOLED))
        distances, nearest = ops.knn_l2(feats[POOLED].flatten(1), self.reference_pooled, k=self.top_k)
        maps = torch.stack([
            self.pixel_map(self.pyramid_maps({tap: feats[tap][i : i + 1] for tap in self.taps}), nearest[i])
            for i in range(len(images))  # one query at a time: its pyramid is the largest tensor here
        ])
        maps = ops.gaussian_blur(maps, self.smoothing_sigma)  # levels were upsampled before averaging
        return Prediction(scores=distances.mean(dim=1).float().cpu(), maps=maps.float().cpu())

    def pixel_map(self, query_levels: list[torch.Tensor], references: torch.Tensor) -> torch.Tensor:
        """``[S, S]`` map of one query: per pyramid level, NN distance of each position to every position
        of the selected references (searched one reference at a time, then the minimum); levels
        upsampled to the input size and averaged."""
        levels = []
        for query, gallery in zip(query_levels, self.reference_rows):
            rows = grid_rows(query)
            distance = torch.stack([ops.knn_l2(rows, gallery[r])[0][:, 0] for r in references.tolist()]).amin(dim=0)
            levels.append(ops.resize_maps(distance.reshape(1, *query.shape[-2:]), self.image_size))
        return torch.cat(levels).mean(dim=0)
