"""PaDiM (Defard et al. 2020) as the few-shot tables compare it (spec datasets_metrics §4.3; shared
setup: :mod:`sowa_lib.methods.cnn_baseline`)."""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from sowa_lib.backbones.cnn import TappedCNN
from sowa_lib.methods.base import Prediction
from sowa_lib.methods.cnn_baseline import CNNBaseline, upsampled_concat

#: PaDiM paper (§4.1): random dimensionality reduction to d = 100 of ResNet-18's 448 channels and
#: d = 550 of WRN-50-2's 1792 (layer1–3).
PADIM_PAPER_FEATURES: dict[int, int] = {448: 100, 1792: 550}


def padim_features(channels: int) -> int:
    """PaDiM's kept dimensions for ``channels`` embedding channels: the paper's value for its two
    backbones' widths, else WRN-50-2's ratio 550/1792 of them (rounded, at least 1)."""
    return PADIM_PAPER_FEATURES.get(channels, max(1, round(channels * PADIM_PAPER_FEATURES[1792] / 1792)))


class PaDiM(CNNBaseline):
    """PaDiM (Defard et al. 2020; reference code xiahaifeng1995/PaDiM, anomalib).

    Embedding: the ``taps`` layer1–3, layer2/3 upsampled (nearest, as the reference's unfold/fold)
    to layer1's grid and concatenated; ``n_features`` channels kept, chosen as the reference does with
    ``random.seed(1024); random.sample(range(C), n_features)``. ``n_features=None`` follows the
    backbone (:func:`padim_features`): the paper's d = 100 of 448 channels (ResNet-18, and the demo's
    tiny ResNet of the same widths) or 550 of 1792 (WRN-50-2), else WRN-50's ratio 550/1792 of the
    channels (e.g. 54 of EfficientNet-Lite0's 176). Per grid position a Gaussian
    N(μ, Σ + ε·I), ε = 0.01, fit to the K references; score = Mahalanobis distance, upsampled,
    smoothed (σ = ``smoothing_sigma``); image score = max of the smoothed map.

    With K references Σ has rank <= K - 1, so Σ + εI is stored as μ plus the K centred references
    and inverted exactly with the Woodbury identity (memory O(P·K·d) instead of O(P·d²): 5 GB for
    d = 550 at 64×64 positions). ``covariance_ddof`` = 1 is ``np.cov``'s unbiased estimate
    (reference code); with K = 1 it is undefined (``np.cov`` returns NaN), so the scatter is taken
    as zero and Σ + εI = εI (Euclidean distance / √ε).
    """

    name: ClassVar[str] = "padim"
    cached: ClassVar[tuple[str, ...]] = ("mean", "factors", "inner_inverse")

    def __init__(
        self,
        *,
        taps: Sequence[str] = ("layer1", "layer2", "layer3"),
        n_features: int | None = None,
        selection_seed: int = 1024,
        epsilon: float = 0.01,
        covariance_ddof: int = 1,
        backbone: str | TappedCNN = "wide_resnet50_2",
        pretrained: str | None = "IMAGENET1K_V1",
        checkpoint: str | Path | None = None,
        image_size: int = 256,
        smoothing_sigma: float = 4.0,
    ) -> None:
        super().__init__(backbone, pretrained, checkpoint, image_size, smoothing_sigma)
        self.taps, self.epsilon, self.covariance_ddof = tuple(taps), epsilon, covariance_ddof
        total = sum(self.backbone.channels(self.taps).values())
        n_features = padim_features(total) if n_features is None else n_features
        self.n_features = n_features
        if n_features > total:
            raise ValueError(f"padim: n_features={n_features} > {total} channels of {self.taps}")
        self.register_buffer("selected", torch.tensor(random.Random(selection_seed).sample(range(total), n_features)), persistent=False)
        self.mean: torch.Tensor | None = None  # [P, d]
        self.factors: torch.Tensor | None = None  # Uᵀ [P, K, d] (scaled centred references): Σ = U Uᵀ
        self.inner_inverse: torch.Tensor | None = None  # (εI_K + UᵀU)⁻¹ [P, K, K]

    def config(self) -> dict[str, Any]:
        """The constructor options, with ``n_features`` resolved to the number kept."""
        return {**super().config(), "n_features": self.n_features}

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[N, P, d]`` float64 embeddings at layer1's ``(h, w)`` grid positions (P = h·w)."""
        return self.embed_features(self.features(images, self.taps))

    def embed_features(self, feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[int, int]]:
        """:meth:`embed` of already extracted backbone features."""
        embedding = upsampled_concat([feats[tap] for tap in self.taps], "nearest")[:, self.selected]
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
        feats = self.features(images, self.taps)
        distances = [self.mahalanobis_map({t: f[i : i + 1] for t, f in feats.items()}) for i in range(len(images))]
        maps = self.smooth_maps(torch.cat(distances).float())
        return Prediction(scores=maps.flatten(1).amax(dim=1).cpu(), maps=maps.cpu())
