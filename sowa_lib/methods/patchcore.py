"""PatchCore (Roth et al. 2022) as the few-shot tables compare it (spec datasets_metrics §4.3;
shared setup: :mod:`sowa_lib.methods.cnn_baseline`; coreset and k-NN: :mod:`sowa_lib.ops`)."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from sowa_lib import ops
from sowa_lib.backbones.cnn import TappedCNN
from sowa_lib.methods.base import Prediction
from sowa_lib.methods.cnn_baseline import CNNBaseline, upsampled_concat


def adaptive_pool_matrix(in_dim: int, out_dim: int) -> torch.Tensor:
    """``[out_dim, in_dim]`` matrix of ``F.adaptive_avg_pool1d`` from ``in_dim`` to ``out_dim``: output
    ``i`` averages inputs ``floor(i·in/out)`` to ``ceil((i+1)·in/out) - 1`` (PyTorch's windows)."""
    matrix = torch.zeros(out_dim, in_dim)
    for i in range(out_dim):
        start, end = (i * in_dim) // out_dim, -((-(i + 1) * in_dim) // out_dim)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class PatchCore(CNNBaseline):
    """PatchCore (Roth et al. 2022; reference code amazon-science/patchcore-inspection, anomalib).

    Patch features (reference code): the ``taps`` layer2 and layer3; each position's 3×3 neighbourhood
    (zero-padded) flattened to C·9 values and adaptively average-pooled to ``pretrain_embed_dim``
    (1024); layer3 upsampled bilinearly to layer2's grid; the two 1024-vectors concatenated and
    adaptively pooled to ``target_embed_dim`` (1024). The unfold + 1-D pooling is one linear map per
    position, so it runs here as a 3×3 convolution with the pooling matrix as kernel (same numbers).

    Memory bank: all reference patches when K <= ``full_bank_max_shots`` (= 4: few-shot protocol,
    §4.3), else a greedy coreset of ``coreset_ratio`` (0.1, anomalib's default) of them.
    Patch score: L2 distance to the nearest bank patch; map upsampled, smoothed (σ = ``smoothing_sigma``).

    Fidelity switch ``image_score``: ``"reweighted"`` (default; paper eq. 7 and anomalib, with
    ``num_neighbors`` = 9) or ``"max"`` (patchcore-inspection: the largest patch score).
    """

    name: ClassVar[str] = "patchcore"
    cached: ClassVar[tuple[str, ...]] = ("bank",)

    def __init__(
        self,
        *,
        taps: Sequence[str] = ("layer2", "layer3"),
        patch_size: int = 3,
        pretrain_embed_dim: int = 1024,
        target_embed_dim: int = 1024,
        coreset_ratio: float = 0.1,
        full_bank_max_shots: int = 4,
        coreset_projection_dim: int | None = 128,
        num_neighbors: int = 9,
        image_score: str = "reweighted",
        seed: int = 0,
        backbone: str | TappedCNN = "wide_resnet50_2",
        pretrained: str | None = "IMAGENET1K_V1",
        checkpoint: str | Path | None = None,
        image_size: int = 256,
        smoothing_sigma: float = 4.0,
    ) -> None:
        super().__init__(backbone, pretrained, checkpoint, image_size, smoothing_sigma)
        if image_score not in ("reweighted", "max"):
            raise ValueError(f"image_score must be 'reweighted' or 'max', got {image_score!r}")
        self.taps, self.patch_size, self.target_embed_dim = tuple(taps), patch_size, target_embed_dim
        self.coreset_ratio, self.full_bank_max_shots, self.coreset_projection_dim = coreset_ratio, full_bank_max_shots, coreset_projection_dim
        self.num_neighbors, self.image_score, self.seed = num_neighbors, image_score, seed
        channels = self.backbone.channels(self.taps)
        for tap in self.taps:
            kernel = adaptive_pool_matrix(channels[tap] * patch_size**2, pretrain_embed_dim)
            self.register_buffer(f"kernel_{tap}", kernel.view(pretrain_embed_dim, channels[tap], patch_size, patch_size), persistent=False)
        self.bank: torch.Tensor | None = None

    def patch_features(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[N, h, w, target_embed_dim]`` patch features on the first tap's grid."""
        feats = self.features(images, self.taps)
        pooled = [F.conv2d(feats[tap], getattr(self, f"kernel_{tap}"), padding=self.patch_size // 2) for tap in self.taps]
        stacked = upsampled_concat(pooled, "bilinear")  # [N, L * 1024, h, w], layer-major
        n, _, h, w = stacked.shape
        rows = stacked.permute(0, 2, 3, 1).reshape(n * h * w, 1, -1)
        return F.adaptive_avg_pool1d(rows, self.target_embed_dim).reshape(n, h, w, -1), (h, w)

    def remember(self, images: torch.Tensor) -> None:
        features, _ = self.patch_features(images)
        bank = features.reshape(-1, features.shape[-1])
        if len(images) > self.full_bank_max_shots and self.coreset_ratio < 1.0:
            size = max(1, int(len(bank) * self.coreset_ratio))
            bank = bank[ops.greedy_coreset(bank, size, self.coreset_projection_dim, seed=self.seed)]
        self.bank = bank

    @torch.no_grad()
    def predict(self, images: torch.Tensor, category: str) -> Prediction:
        if self.bank is None:
            raise RuntimeError("patchcore: call set_references first")
        features, grid = self.patch_features(images)
        rows = features.reshape(len(images), -1, features.shape[-1])
        distance, nearest = ops.knn_l2(rows.reshape(-1, rows.shape[-1]), self.bank, k=1)
        patch_scores, nearest = distance.reshape(len(images), -1), nearest.reshape(len(images), -1)
        scores = self.reweighted_scores(rows, patch_scores, nearest) if self.image_score == "reweighted" else patch_scores.amax(dim=1)
        maps = self.smooth_maps(patch_scores.reshape(len(images), *grid))
        return Prediction(scores=scores.float().cpu(), maps=maps.float().cpu())

    def reweighted_scores(self, rows: torch.Tensor, patch_scores: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
        """Paper eq. 7 as anomalib computes it: s = (1 - softmax(‖m_test* - m‖ over m ∈ N_b(m*))[m*]) · s*,
        with m_test* the query's most anomalous patch, m* its nearest bank patch and N_b(m*) the
        ``num_neighbors`` bank patches nearest to m* (m* first)."""
        batch = torch.arange(len(rows), device=rows.device)
        worst = patch_scores.argmax(dim=1)
        worst_features = rows[batch, worst]  # m_test*
        _, support = ops.knn_l2(self.bank[nearest[batch, worst]], self.bank, k=self.num_neighbors)  # N_b(m*)
        distances = (worst_features[:, None] - self.bank[support]).norm(dim=-1)
        weights = 1.0 - distances.softmax(dim=1)[:, 0]
        return weights * patch_scores[batch, worst]
