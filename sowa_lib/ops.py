"""Tensor operations shared by several methods: nearest-neighbour search, memory banks, greedy
coreset subsampling, map resizing, Gaussian smoothing and category-level min-max.

Each lives here once so that WinCLIP+, April-GAN, SOWA, SPADE, PatchCore and AGPNet call the same
code (DESIGN.md; DEVELOPERS "no copy-paste between methods").
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pairwise_distance(query: torch.Tensor, memory: torch.Tensor, metric: str) -> torch.Tensor:
    """Distances ``[Q, M]`` between rows; ``metric`` is ``"cosine"`` (1 - cos) or ``"l2"`` (Euclidean)."""
    if metric == "cosine":
        return 1.0 - F.normalize(query, dim=-1) @ F.normalize(memory, dim=-1).T
    if metric == "l2":
        return torch.cdist(query, memory).clamp_min(0.0)
    raise ValueError(f"unknown metric {metric!r}; use 'cosine' or 'l2'")


def knn_distance(
    query: torch.Tensor, memory: torch.Tensor, k: int = 1, metric: str = "cosine", chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest distances from each query row to the memory rows, ``([Q, k], [Q, k])``.

    Vectorised, processed in chunks of ``chunk`` query rows so that the ``[chunk, M]`` distance block
    bounds memory. Returns distances (ascending) and memory indices.
    """
    if memory.shape[0] == 0:
        raise ValueError("memory bank is empty: call set_references with K >= 1 images first")
    k = min(k, memory.shape[0])
    dists, idxs = [], []
    for start in range(0, query.shape[0], chunk):
        block = pairwise_distance(query[start : start + chunk], memory, metric)
        d, i = block.topk(k, dim=1, largest=False)
        dists.append(d)
        idxs.append(i)
    return torch.cat(dists), torch.cat(idxs)


#: :func:`knn_l2` keeps each ``[chunk, bank]`` distance block at most this many floats (16M: 64 MB).
DISTANCE_BLOCK_ELEMENTS = 1 << 24


def knn_l2(query: torch.Tensor, bank: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean k-NN of ``query`` rows in ``bank`` rows (SPADE, PatchCore), chunked so that each
    distance block stays under :data:`DISTANCE_BLOCK_ELEMENTS` whatever the bank size."""
    chunk = max(1, DISTANCE_BLOCK_ELEMENTS // max(1, bank.shape[0]))
    return knn_distance(query, bank, k=k, metric="l2", chunk=chunk)


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


class MemoryBank:
    """Per-layer banks of reference tokens; the score of a query token is its nearest-neighbour distance.

    Used by April-GAN (spec april_gan_winclip_peers §1.6), SOWA (sowa §1.8) and WinCLIP+ (§2.2, with
    ``scale=0.5``): all tokens of all K references pooled per layer, positions not aligned.
    """

    def __init__(self, metric: str = "cosine", scale: float = 1.0) -> None:
        self.metric = metric
        self.scale = scale
        self.banks: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.banks)

    def set(self, layer_tokens: list[torch.Tensor]) -> None:
        """``layer_tokens[l]``: ``[K, T, C]`` tokens of layer ``l`` for the K references."""
        self.banks = [tokens.reshape(-1, tokens.shape[-1]) for tokens in layer_tokens]

    def clear(self) -> None:
        self.banks = []

    def distances(self, layer_tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per layer ``[N, T]``: ``scale *`` min distance of each query token to that layer's bank."""
        if len(layer_tokens) != len(self.banks):
            raise ValueError(f"{len(layer_tokens)} query layers for {len(self.banks)} memory layers")
        out = []
        for tokens, bank in zip(layer_tokens, self.banks):
            n, t, c = tokens.shape
            d, _ = knn_distance(tokens.reshape(-1, c), bank, k=1, metric=self.metric)
            out.append(self.scale * d[:, 0].reshape(n, t))
        return out


def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` or ``[N, T, C]`` patch values on a square grid -> ``[N, h, w]`` / ``[N, C, h, w]``."""
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} tokens do not form a square grid")
    if tokens.ndim == 2:
        return tokens.reshape(tokens.shape[0], side, side)
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


def resize_maps(maps: torch.Tensor, size: int, align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of ``[N, h, w]`` or ``[N, C, h, w]`` maps to ``size``×``size``."""
    squeeze = maps.ndim == 3
    x = maps.unsqueeze(1) if squeeze else maps
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=align_corners)
    return x.squeeze(1) if squeeze else x


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """The kernel of ``scipy.ndimage.gaussian_filter`` (radius ``int(truncate * sigma + 0.5)``)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).float()


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0, truncate: float = 4.0) -> torch.Tensor:
    """Per-map Gaussian smoothing of ``[N, H, W]``, equal to ``scipy.ndimage.gaussian_filter``
    (mode ``reflect``, i.e. edge-including symmetric padding) applied to each map separately.

    SOWA and ViTAD/AGPNet apply it with σ = 4 (sowa spec §1.7; datasets_metrics §1.5).
    """
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma, truncate).to(maps)
    radius = (len(kernel) - 1) // 2
    x = maps.unsqueeze(1)
    for dim in (2, 3):
        pad = [0, 0, radius, radius] if dim == 2 else [radius, radius, 0, 0]
        x = _reflect_pad(x, pad)
        weight = kernel.view(1, 1, -1, 1) if dim == 2 else kernel.view(1, 1, 1, -1)
        x = F.conv2d(x, weight)
    return x.squeeze(1)


def _reflect_pad(x: torch.Tensor, pad: list[int]) -> torch.Tensor:
    """scipy's ``reflect`` mode (d c b a | a b c d | d c b a), also for pads wider than the map."""
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    rows = _reflect_index(h, top, bottom, x.device)
    cols = _reflect_index(w, left, right, x.device)
    return x[..., rows, :][..., :, cols]


def _reflect_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    idx = torch.arange(-before, n + after, device=device)
    period = 2 * n
    idx = idx % period
    return torch.where(idx >= n, period - 1 - idx, idx)


def minmax(values: torch.Tensor) -> torch.Tensor:
    """``(v - min) / (max - min)``; all zeros when the values are constant."""
    span = values.max() - values.min()
    if span == 0:
        return torch.zeros_like(values)
    return (values - values.min()) / span
