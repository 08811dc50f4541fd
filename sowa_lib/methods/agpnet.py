"""AGPNet: attention-guided perturbation for feature reconstruction (spec ``agpnet``; paper
arXiv 2408.07490, ``papers/003_694cbe08c2115663.txt``).

No official code exists and the exported paper lost its equations, so each value below carries its
source: **[P]** stated in the paper text, **[V]** inherited from ViTAD (ADer code,
datasets_metrics_agpnet §1.5), *not* stated by AGPNet, **[?]** our choice where both are silent.

Reconstruction branch (kept at inference), spec §1:
    F = Σ_l LN(f_l)                       frozen extractor taps, LayerNorm-ed one by one, summed (eq. 1) [P]
    F̂ = Decoder(Fusion(F))                Linear fusion [V], 4 plain ViT blocks [P], learnable position embedding [V]
    map = blur_σ(up(d(F, F̂)))             d = 1 − cos per token [V] (L2 option), bilinear up [P], σ = 4 [V]
    score = max(avg_pool_16(map))          max of the average-pooled map [P], 16×16 window, stride 1 [V]
Perturbation branch (training only), spec §2:
    A = Norm(mean(Norm(A_prior), Norm(A_teacher)))      prior: extractor CLS attention [P]; teacher:
                                                         EMA decoder's attention [P]; the combination [?]
    F̃ = F + λ(t)·γ·Norm(A) ⊙ ε,  ε ~ N(0, I)            eq. 4 [P]; λ: 0 → 1 over epochs 1–400 of 500 [P]
    x̃ = x + σ_img·top_r(up(A)) ⊙ ε′                      r: 0.6 → 1 over epochs 100–400 [P]; σ_img = 1 [?]
    L = L_f + L_if = d(Dec(F̃), F) + d(Dec(F̃(x̃)), F)    eqs. 6–7 [P]; d = flat 1 − cos per sample [V]

Every [V] and [?] value is listed, with its current value, by :func:`unstated_values` (notebook 03).
ViTAD's training details are options with ViTAD's behaviour as default (issue #18; the paper is
silent on all five): ``fusion`` (a learnable ``Linear(C, C)`` before the decoder, ADer
``model/vitad.py``), ``weight_decay_params`` (AdamW decay only on ≥ 2-D non-bias tensors, ADer
``optim/__init__.py``), ``grad_clip_norm`` (5.0, ``cfg_common.py``), ``drop_last`` (the training
loader drops the last partial batch) and ``image_interpolation`` (bilinear image resize,
``vitad_mvtec.py``; the runner reads :attr:`AGPNet.interpolation`).

Efficiency (Table 9's learnable parameters and GFLOPs, in ``claims/agpnet.csv``): the spec's decoder,
4 ViT-S blocks (dim 384) at the timm/ViTAD MLP ratio 4 [V], has 4 × 1.77 M + 0.1 M (position
embedding) = 7.2 M parameters, 7.3 M with ViTAD's fusion Linear, and 3.6 GFLOPs at 256 px; the
paper's count fits no documented configuration. ``decoder_mlp_ratio`` is an option so the count can
be matched; the default stays the spec's 4. :func:`learnable_parameters` counts a configuration.
"""
from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn
from sowa_lib.progress import tqdm

from sowa_lib import ops
from sowa_lib.backbones.clip import ClipBackbone, as_backbone as as_clip_backbone, model_config as clip_model_config
from sowa_lib.backbones.cnn import BACKBONES as CNN_BACKBONES, TappedCNN, build_backbone as build_cnn
from sowa_lib.backbones.dino import DINO_IMAGE_SIZE, DINO_VIT_S16, TINY_DINO, DinoBackbone, explicit_attention, load_dino
from sowa_lib.data.sample import Sample
from sowa_lib.data.transforms import load_images
from sowa_lib.methods.base import AnomalyMethod, Prediction, check_choice
from sowa_lib.training import SNAPSHOT_MARKER, atomic_torch_save, snapshot_fingerprint

SETTINGS = ("multi_class", "one_class", "few_shot")
NOISE_TYPES = ("attention", "random", "none")
RANDOM_IMAGE_REGIONS = ("area", "whole")
MASK_SOURCES = ("both", "prior", "teacher")
WEIGHT_DECAY_PARAMS = ("matrices", "all")
INTERPOLATIONS = ("bilinear", "bicubic")
CHECKPOINT_NAME = "last.pt"
#: ViTAD's learning-rate rule [V]: ``BASE_LR × batch_size / LR_REFERENCE_BATCH``.
BASE_LR, LR_REFERENCE_BATCH = 1e-4, 8
#: Decoder width and heads behind a CNN extractor, which has no ViT width to follow [?]: ViT-S's.
CNN_DECODER_DIM, CNN_DECODER_HEADS = 384, 6

# ------------------------------------------------------------------------------- schedules (§2–3)
# Epochs are 1-based. Every schedule is a function of (epoch, total epochs) with its breakpoints as
# fractions of the paper's 500 epochs, so a short demo run keeps the curriculum's shape.


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


# -------------------------------------------------------------------------- tensor pieces (§1–3)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Mean teacher (eq. 3, Tarvainen & Valpola): ``θ_t ← m·θ_t + (1 − m)·θ_s`` for every parameter."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


def minmax_per_sample(values: torch.Tensor) -> torch.Tensor:
    """Norm(·) of eq. 4: each sample (first dim) rescaled to [0, 1]; constant samples become 0."""
    flat = values.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    span = high - low
    return torch.where(span > 0, (flat - low) / span.clamp_min(1e-12), torch.zeros_like(flat)).view_as(values)


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


def layer_norm_sum(taps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 1: ``Σ_l LN(f_l)`` over equally wide token maps ``[N, T, C]`` [P]. The LayerNorms carry no
    affine parameters [?]: the target must stay fixed, a learnable scale could shrink it to zero."""
    return torch.stack([F.layer_norm(t, t.shape[-1:]) for t in taps]).sum(0)


def rotate_flip_augment(images: torch.Tensor, folds: int = 32) -> torch.Tensor:
    """``[K, 3, S, S]`` -> ``[folds·K, 3, S, S]``: the few-shot "32-fold data augmentation (rotate and
    flip)" [P], realised as ``folds/2`` rotations by multiples of ``720°/folds`` (22.5° for 32), each
    with and without a horizontal flip [?]. Corners are filled with 0 (the normalised mean colour) [?]."""
    from torchvision.transforms.functional import InterpolationMode, rotate

    if folds % 2:
        raise ValueError("folds must be even (rotations × {no flip, flip})")
    views = []
    for angle in torch.arange(folds // 2).mul(720.0 / folds).tolist():
        rotated = rotate(images, angle, interpolation=InterpolationMode.BILINEAR, fill=0.0)
        views += [rotated, rotated.flip(-1)]
    return torch.cat(views)


# ---------------------------------------------------------------------- extractors (spec §1, §2)


class _VitTaps(nn.Module):
    """DINO ViT (timm): taps fused by eq. 1; prior = CLS→patch attention of ``attention_blocks``,
    averaged over heads and blocks ("element-wise average pooling") [P]."""

    def __init__(self, backbone: DinoBackbone, taps: Sequence[int], attention_blocks: Sequence[int]) -> None:
        super().__init__()
        self.backbone, self.taps, self.attention_blocks = backbone, tuple(taps), tuple(attention_blocks)
        self.width, self.num_heads, self.grid_size = backbone.width, backbone.num_heads, backbone.grid_size

    @property
    def weights_id(self) -> str:
        return f"{self.backbone.name}:{self.backbone.pretrained or 'random'}"

    def forward(self, images: torch.Tensor, with_prior: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        taps, attention = self.backbone(images, self.taps, self.attention_blocks if with_prior else ())
        return layer_norm_sum(taps), None if attention is None else attention.mean(dim=(1, 2))


def _multihead_attention_weights(attention: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """``softmax(q kᵀ/√d)`` ``[B, heads, L, L]`` of an ``nn.MultiheadAttention`` on batch-first ``x``."""
    batch, length, width = x.shape
    heads = attention.num_heads
    q, k, _ = F.linear(x, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
    q, k = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k))
    return (q @ k.transpose(-2, -1) / math.sqrt(width // heads)).softmax(dim=-1)


class _ClipTaps(nn.Module):
    """CLIP ViT (open_clip) for the backbone ablation (Table 6): patch tokens of the taps fused by
    eq. 1; prior = CLS→patch attention recomputed from each attention block's ``ln_1`` output."""

    def __init__(self, backbone: ClipBackbone, taps: Sequence[int], attention_blocks: Sequence[int]) -> None:
        super().__init__()
        self.backbone, self.taps, self.attention_blocks = backbone, tuple(taps), tuple(attention_blocks)
        self.width, self.grid_size = backbone.width, backbone.grid_size
        self.num_heads = backbone.blocks[0].attn.num_heads

    @property
    def weights_id(self) -> str:
        return f"{self.backbone.name}:{self.backbone.pretrained or 'random'}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor, with_prior: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        inputs: dict[int, torch.Tensor] = {}
        batch_first = self.backbone.visual.transformer.batch_first
        hooks = [
            self.backbone.blocks[i].ln_1.register_forward_hook(
                lambda _m, _a, out, i=i: inputs.__setitem__(i, out if batch_first else out.transpose(0, 1)))
            for i in (self.attention_blocks if with_prior else ())
        ]
        try:
            _, taps = self.backbone.encode_image(images, self.taps)
        finally:
            for hook in hooks:
                hook.remove()
        prior = None
        if with_prior:
            rows = [_multihead_attention_weights(self.backbone.blocks[i].attn, inputs[i])[:, :, 0, 1:] for i in self.attention_blocks]
            prior = torch.stack(rows, dim=1).mean(dim=(1, 2))
        return layer_norm_sum([t[:, 1:] for t in taps]), prior


class _CnnTaps(nn.Module):
    """CNN backbone ablation (Table 6: WideResNet-50, EfficientNet-B4). **Our choices [?]** — the
    paper gives no detail for CNNs:

    - target: each tapped stage average-pooled to the /16 grid (16×16 at 256 px), LayerNorm-ed over
      channels, then **concatenated** (eq. 1 sums, which needs equal widths; stages differ);
    - prior: activation-based spatial attention (Zagoruyko & Komodakis 2017, "attention transfer"),
      the channel mean of squared activations of each stage, min-max normalised per image and
      averaged over the stages; a CNN has no self-attention to reuse.
    """

    num_heads = None

    def __init__(self, backbone: TappedCNN, taps: Sequence[str], image_size: int) -> None:
        super().__init__()
        self.backbone, self.taps = backbone, tuple(taps)
        self.grid_size = image_size // 16
        self.width = sum(backbone.channels(self.taps).values())

    @property
    def weights_id(self) -> str:
        return self.backbone.weights_id

    @torch.no_grad()
    def forward(self, images: torch.Tensor, with_prior: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        grid = (self.grid_size, self.grid_size)
        stages = [F.adaptive_avg_pool2d(f, grid).flatten(2).transpose(1, 2) for f in self.backbone(images, self.taps).values()]
        target = torch.cat([F.layer_norm(s, s.shape[-1:]) for s in stages], dim=-1)
        prior = torch.stack([minmax_per_sample(s.pow(2).mean(-1)) for s in stages]).mean(0) if with_prior else None
        return target, prior


#: Default taps per backbone family. ViTs: 0-based blocks 2/5/8/11 = the spec's 1-based 3/6/9/12
#: ("shallow + deep", Table 8) [V-style, ?]. CNNs: strides 4/8/16 [?].
DEFAULT_VIT_TAPS = (2, 5, 8, 11)
DEFAULT_CNN_TAPS = ("layer1", "layer2", "layer3")
#: "CLIP (ViT-B)" of Table 6 is ``backbone=CLIP_VIT_B``; the exact checkpoint is not stated [?].
CLIP_VIT_B, CLIP_PRETRAINED = "ViT-B-16", "openai"


def _is_clip_name(name: str | nn.Module) -> bool:
    if not isinstance(name, str):
        return False
    try:
        clip_model_config(name)
    except KeyError:
        return False
    return True


def build_extractor(
    backbone: str | nn.Module, pretrained: str | None, image_size: int, taps: Sequence | None,
    attention_blocks: Sequence[int] | None,
) -> tuple[nn.Module, str]:
    """The frozen extractor adapter for ``backbone`` and the input normalisation it expects.

    ``pretrained="default"`` picks each family's usual weights: timm's DINO tag, CLIP ``openai``,
    torchvision ``IMAGENET1K_V1``. Tiny models (names ``tiny*``) are random with their builders' fixed
    seed: they stand in for pretrained weights, so AGPNet's training ``seed`` does not change them.
    """
    tiny = isinstance(backbone, str) and backbone.startswith("tiny")
    if isinstance(backbone, TappedCNN) or backbone in CNN_BACKBONES:
        cnn = build_cnn(backbone, None if tiny else ("IMAGENET1K_V1" if pretrained == "default" else pretrained))
        return _CnnTaps(cnn, tuple(taps if taps is not None else DEFAULT_CNN_TAPS), image_size), "imagenet"
    vit_taps = tuple(taps if taps is not None else DEFAULT_VIT_TAPS)
    attention = tuple(attention_blocks if attention_blocks is not None else vit_taps)
    if isinstance(backbone, ClipBackbone) or _is_clip_name(backbone):
        tag = None if tiny else (CLIP_PRETRAINED if pretrained == "default" else pretrained)
        clip = as_clip_backbone(backbone, tag, image_size=image_size, quick_gelu=tag == "openai")
        return _ClipTaps(clip, vit_taps, attention), "clip"
    if not isinstance(backbone, DinoBackbone):
        tag = None if tiny else ("timm" if pretrained == "default" else pretrained)
        backbone = load_dino(backbone, tag, image_size=image_size)
    if backbone.image_size != image_size:
        raise ValueError(f"the DINO backbone runs at {backbone.image_size}px, AGPNet at {image_size}px")
    return _VitTaps(backbone, vit_taps, attention), "imagenet"


# ------------------------------------------------------------------------------- decoder (§1)


class ReconstructionDecoder(nn.Module):
    """Plain ViT decoder: ViTAD's fusion ``Linear(C, C)`` on the fused features (``fusion``) [V],
    learnable position embedding (no CLS) [V], ``depth`` pre-norm timm blocks (4 [P]; MLP ratio 4,
    qkv bias [V]), no final norm [V]. When the feature width differs from the decoder width (CNN
    backbones) linear in/out projections map between them, as UniAD does [?]. Every Linear, the
    fusion included, gets timm's ViT initialisation [?: ViTAD builds its fusion apart]."""

    def __init__(
        self, feature_dim: int, tokens: int, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, fusion: bool = True
    ) -> None:
        super().__init__()
        self.fusion = nn.Linear(feature_dim, feature_dim) if fusion else nn.Identity()
        self.in_proj = nn.Identity() if feature_dim == dim else nn.Linear(feature_dim, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.out_proj = nn.Identity() if feature_dim == dim else nn.Linear(dim, feature_dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():  # timm's ViT init, as ViTAD's timm-built decoder [V]
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(self.fusion(features)) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.out_proj(x)

    @torch.no_grad()
    def attention_received(self, features: torch.Tensor) -> torch.Tensor:
        """Learnable mask source ``[N, T]``: the attention each token receives as a key, averaged over
        queries, heads and blocks (the decoder has no CLS token to read a row from) [?]."""
        x = self.in_proj(self.fusion(features)) + self.pos_embed
        received = []
        for block in self.blocks:
            received.append(explicit_attention(block, x).mean(dim=(1, 2)))
            x = block(x)
        return torch.stack(received).mean(0)


# --------------------------------------------------------------------------------------- method


class AGPNet(AnomalyMethod):
    """AGPNet (spec ``agpnet``), trained on normal target images: multi-class (one model for all
    categories), one-class (one per category; the runner calls :meth:`fit` per category) or
    few-shot (training on the K references inside :meth:`set_references`).

    Every ablation of the paper is an option: ``feature_noise`` / ``image_noise`` ∈ {"attention",
    "random", "none"} (Table 5; ``random_image_region`` says what image-level "random" noises),
    ``feature_noise_scale`` fixed λ ∈ {0.5, 1.0, 1.5} vs the schedule
    (None; Table 7), ``mask_source`` ∈ {"both", "prior", "teacher"} (Table 7 B/L/D), ``taps`` (Table 8),
    ``mean_teacher`` (Table 8), ``backbone`` (Table 6: DINO ViT-S, CLIP ViT-B ``"ViT-B-16"``,
    ``"wide_resnet50_2"``, ``"efficientnet_b4"``).
    """

    name: ClassVar[str] = "agpnet"
    normalization: ClassVar[str] = "imagenet"
    training_data: ClassVar[str] = "target"
    trains_on_references: ClassVar[bool] = True
    profiles: ClassVar[dict[str, dict[str, Any]]] = {
        # Tiny ViT of the DINO family at 128 px (8×8 tokens); σ and the pooling window scaled with the
        # image. The curriculum keeps its shape (schedules are fractions of the epochs). EMA: the
        # paper's ~5.7k updates (57k steps / 10) over a 10k-update horizon (m = 0.9999) give a ratio
        # ~0.6; the demo's multi-class run (32 updates, one per step, horizon 50) keeps it. Few-shot
        # uses the 8 right-angle rotations/flips and half the epochs to fit the CPU budget.
        "demo": {
            "backbone": TINY_DINO, "image_size": 128, "taps": (0, 1, 2, 3), "epochs": 8, "batch_size": 8,
            "lr": 1e-3, "ema_every": 1, "ema_momentum": 0.98, "gaussian_sigma": 2.0, "score_pool": 8,
            "few_shot_folds": 8, "few_shot_epochs": 4,
        },
    }

    def __init__(
        self,
        *,
        setting: str = "multi_class",
        backbone: str | nn.Module = DINO_VIT_S16,
        pretrained: str | None = "default",
        image_size: int = DINO_IMAGE_SIZE,
        taps: Sequence | None = None,
        attention_blocks: Sequence[int] | None = None,
        decoder_depth: int = 4,
        decoder_dim: int | None = None,
        decoder_heads: int | None = None,
        decoder_mlp_ratio: float = 4.0,
        epochs: int = 500,
        batch_size: int = 32,
        lr: float | None = None,
        weight_decay: float = 1e-4,
        lr_decay_fraction: float = 0.4,
        feature_noise: str = "attention",
        image_noise: str = "attention",
        feature_noise_scale: float | None = None,
        noise_gamma: float = 1.0,
        image_noise_std: float = 1.0,
        random_image_region: str = "area",
        mask_source: str = "both",
        mean_teacher: bool = True,
        ema_momentum: float = 0.9999,
        ema_every: int = 10,
        distance: str = "cosine",
        gaussian_sigma: float = 4.0,
        score_pool: int = 16,
        few_shot_folds: int = 32,
        few_shot_epochs: int | None = None,
        fusion: bool = True,
        weight_decay_params: str = "matrices",
        grad_clip_norm: float | None = 5.0,
        drop_last: bool = True,
        image_interpolation: str = "bilinear",
        seed: int = 0,
    ) -> None:
        """Defaults reproduce the paper (tags as in the module docstring).

        setting: "multi_class" [P headline] / "one_class" / "few_shot".
        backbone, pretrained: DINO ViT-S/16 [P] via timm, ``pretrained`` "default" (timm tag), a local
            file, or None (random); or a built :class:`DinoBackbone` / :class:`ClipBackbone` / CNN name.
        image_size: 256 [V]. taps: 0-based blocks (2, 5, 8, 11) [V-style, ?]; attention_blocks: whose
            CLS attention forms the prior, default the taps ("the associated attention maps") [P].
        decoder_depth 4 [P]; decoder_dim / decoder_heads: default the extractor's width / heads
            (384 / 6 for ViT-S [P]; CNNs: 384 / 6 [?]); decoder_mlp_ratio 4 [V] (module docstring:
            why the parameter count exceeds the paper's 4.42 M).
        epochs 500, batch_size 32 [P]; lr: default ``BASE_LR``·batch/``LR_REFERENCE_BATCH`` [V]; weight_decay 1e-4 [V];
            lr × 0.1 after ``lr_decay_fraction`` of the epochs (200/500) [P].
        feature_noise_scale: None = the 0 → 1 schedule [P]; a float fixes λ (Table 7 ablation).
        noise_gamma γ = 1 [?]; image_noise_std = 1 in normalised pixel units [?].
        random_image_region: where ``image_noise="random"`` adds noise (spec §2: "the same noise with a
            uniform mask"). "area" [?]: a uniformly random region of the attention region's area r(t),
            so that only *where* differs from "attention"; "whole": every pixel (an all-ones mask,
            as feature-level "random" uses).
        mask_source "both" [P best]; mean_teacher True, ema_momentum 0.9999, ema_every 10 steps [P].
        distance "cosine" [V] or "l2"; gaussian_sigma 4 [V]; score_pool 16 (stride 1) [V].
        few_shot_folds 32 [P]; few_shot_epochs: default ``epochs`` (the paper gives none for few-shot) [?].
        ViTAD's training details, the paper silent on each [V] (module docstring): fusion True (a
            learnable Linear(C, C) before the decoder; False: none), weight_decay_params "matrices"
            (decay only ≥ 2-D non-bias tensors; "all": every tensor), grad_clip_norm 5.0 (None: no
            clipping), drop_last True (the last partial batch of an epoch is dropped), image_interpolation
            "bilinear" (antialiased as PIL; "bicubic": the other methods' resize).
        seed: decoder init, shuffling and noise.
        """
        super().__init__()
        for option, value, allowed in (("setting", setting, SETTINGS), ("feature_noise", feature_noise, NOISE_TYPES),
                                       ("image_noise", image_noise, NOISE_TYPES), ("mask_source", mask_source, MASK_SOURCES),
                                       ("random_image_region", random_image_region, RANDOM_IMAGE_REGIONS),
                                       ("distance", distance, ("cosine", "l2")), ("weight_decay_params", weight_decay_params, WEIGHT_DECAY_PARAMS),
                                       ("image_interpolation", image_interpolation, INTERPOLATIONS)):
            check_choice(option, value, allowed)
        self.setting, self.image_size, self.seed = setting, image_size, seed
        self.extractor, self.normalization = build_extractor(backbone, pretrained, image_size, taps, attention_blocks)
        self.decoder_shape = dict(
            feature_dim=self.extractor.width, tokens=self.extractor.grid_size ** 2,
            dim=decoder_dim or (self.extractor.width if self.extractor.num_heads else CNN_DECODER_DIM),
            depth=decoder_depth, heads=decoder_heads or self.extractor.num_heads or CNN_DECODER_HEADS, mlp_ratio=decoder_mlp_ratio,
            fusion=fusion,
        )
        self.weight_decay_params, self.grad_clip_norm, self.drop_last = weight_decay_params, grad_clip_norm, drop_last
        self.interpolation = image_interpolation
        self.epochs, self.batch_size, self.weight_decay, self.lr_decay_fraction = epochs, batch_size, weight_decay, lr_decay_fraction
        self.lr = lr if lr is not None else BASE_LR * batch_size / LR_REFERENCE_BATCH
        self.feature_noise, self.image_noise, self.mask_source = feature_noise, image_noise, mask_source
        self.feature_noise_scale, self.noise_gamma, self.image_noise_std = feature_noise_scale, noise_gamma, image_noise_std
        self.random_image_region = random_image_region
        self.mean_teacher, self.ema_momentum, self.ema_every = mean_teacher, ema_momentum, ema_every
        self.distance, self.gaussian_sigma, self.score_pool = distance, gaussian_sigma, score_pool
        self.few_shot_folds, self.few_shot_epochs = few_shot_folds, few_shot_epochs or epochs
        self.reset_decoder()

    # ------------------------------------------------------------------ model pieces
    def reset_decoder(self) -> None:
        """A freshly initialised decoder (from ``seed``) and its mean-teacher copy."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            decoder = ReconstructionDecoder(**self.decoder_shape)
        device = self.device
        self.decoder = decoder.to(device)
        self.teacher = copy.deepcopy(self.decoder).requires_grad_(False)

    def config(self) -> dict[str, Any]:
        """The constructor options, with ``pretrained`` resolved to the weights actually loaded."""
        return {**super().config(), "pretrained": self.extractor.weights_id}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """``decoder.*`` (used at inference) and ``teacher.*`` (EMA copy, training only)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k.startswith(("decoder.", "teacher."))}

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target ``F`` and reconstruction ``F̂``, both ``[N, T, C]``, of clean images."""
        target, _ = self.extractor(images, with_prior=False)
        return target, self.decoder(target)

    # ------------------------------------------------------------------ inference (§1)
    @torch.no_grad()
    def predict(self, images: torch.Tensor, category: str) -> Prediction:
        """Anomaly maps ``[N, S, S]``: per-token distance, bilinear up (align_corners=True [V]),
        Gaussian σ; scores: max of the ``score_pool``-window average-pooled map (stride 1)."""
        target, reconstruction = self.reconstruct(images)
        grid = ops.tokens_to_grid(token_distance(reconstruction, target, self.distance))
        maps = ops.gaussian_blur(ops.resize_maps(grid, self.image_size, align_corners=True), self.gaussian_sigma)
        scores = F.avg_pool2d(maps.unsqueeze(1), self.score_pool, stride=1).flatten(1).amax(dim=1)
        return Prediction(scores=scores.float().cpu(), maps=maps.float().cpu())

    # ------------------------------------------------------------------ perturbation (§2)
    def attention_mask(self, target: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """Final mask ``A`` ``[N, T]`` in [0, 1]: min-max normalised prior and/or learnable mask, averaged
        when both [?]; the learnable one comes from the EMA teacher, or from the decoder itself when
        ``mean_teacher=False`` (Table 8 baseline)."""
        parts = []
        if self.mask_source in ("both", "prior"):
            parts.append(minmax_per_sample(prior))
        if self.mask_source in ("both", "teacher"):
            source = self.teacher if self.mean_teacher else self.decoder
            parts.append(minmax_per_sample(source.attention_received(target)))
        return minmax_per_sample(torch.stack(parts).mean(0))

    def perturbed_inputs(
        self, images: torch.Tensor, epoch: int, total_epochs: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The clean target ``F`` and the decoder inputs at ``epoch`` of ``total_epochs``: feature-perturbed
        ``F̃`` and, unless ``image_noise="none"``, the image- and feature-perturbed ``F̃(x̃)`` (eqs. 4, 6–7)."""
        wants_attention = "attention" in (self.feature_noise, self.image_noise)
        with torch.no_grad():
            target, prior = self.extractor(images, with_prior=wants_attention and self.mask_source != "teacher")
            tokens = target.shape[:2]
            mask = self.attention_mask(target, prior) if wants_attention else None
            scale = self.feature_noise_scale if self.feature_noise_scale is not None else feature_noise_intensity(epoch, total_epochs)
            feature_weight = self._feature_weight(tokens, mask, generator)

            def perturb_features(features: torch.Tensor) -> torch.Tensor:
                if feature_weight is None:
                    return features
                noise = torch.randn(features.shape, generator=generator, device=features.device)
                return features + scale * self.noise_gamma * feature_weight.unsqueeze(-1) * noise

            inputs = [perturb_features(target)]
            if self.image_noise != "none":
                region = self._image_region(mask, tokens, image_noise_ratio(epoch, total_epochs), generator)
                noise = torch.randn(images.shape, generator=generator, device=images.device)
                noisy_target, _ = self.extractor(images + self.image_noise_std * region.unsqueeze(1) * noise, with_prior=False)
                inputs.append(perturb_features(noisy_target))
        return target, inputs

    def _feature_weight(self, tokens: torch.Size, mask: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor | None:
        """Norm(A) for "attention" [P]; a uniform all-ones mask for "random" (same noise everywhere) [?]."""
        if self.feature_noise == "attention":
            return mask
        if self.feature_noise == "random":
            return torch.ones(tokens, device=generator.device)
        return None

    def _image_region(self, mask: torch.Tensor | None, tokens: torch.Size, ratio: float, generator: torch.Generator) -> torch.Tensor:
        """Where the image noise goes, float ``[N, S, S]``: the attention mask ``[N, T]`` upsampled
        bilinearly to the image and binarised keeping the top ``ratio`` of pixels [P]. For "random"
        (``random_image_region``): uniform random token scores in its place, so a random region of the
        same area is noised ("area" [?]), or every pixel ("whole")."""
        if self.image_noise == "random" and self.random_image_region == "whole":
            return torch.ones(tokens[0], self.image_size, self.image_size, device=generator.device)
        scores = mask if self.image_noise == "attention" else torch.rand(tokens, generator=generator, device=generator.device)
        upsampled = ops.resize_maps(ops.tokens_to_grid(scores), self.image_size, align_corners=True)
        return top_ratio_mask(upsampled, ratio).float()

    # ------------------------------------------------------------------ training (§3)
    def training_loss(self, images: torch.Tensor, epoch: int, total_epochs: int, generator: torch.Generator) -> torch.Tensor:
        """``L = L_f + L_if``: every perturbed input's reconstruction against the clean ``F``."""
        target, inputs = self.perturbed_inputs(images, epoch, total_epochs, generator)
        reconstructions = self.decoder(torch.cat(inputs)).split(len(images))
        return sum(flat_cosine_loss(r, target) for r in reconstructions)

    def fit(self, samples: Sequence[Sample], *, checkpoint_dir: Path | None = None, progress: bool = True) -> dict[str, Any]:
        """Train on the normal images of ``samples`` (multi-/one-class); resumes from
        ``checkpoint_dir/last.pt`` when present. Few-shot training happens in :meth:`set_references`."""
        if self.setting == "few_shot":
            raise ValueError("few-shot AGPNet trains on the K references in set_references, not in fit")
        normal = [s for s in samples if s.label == 0]
        if not normal:
            raise ValueError("AGPNet trains on normal images; none given")
        images = load_images(normal, self.image_size, self.normalization, self.interpolation)
        return self.train_on_images(images, self.epochs, checkpoint_dir=checkpoint_dir, progress=progress)

    def set_references(self, images: torch.Tensor, category: str, *, checkpoint_dir: Path | None = None) -> None:
        """Few-shot: a fresh decoder trained on the 32-fold rotate/flip augmented K references [P].

        ``checkpoint_dir``: where this training keeps its epoch checkpoint and resumes from it, as
        :meth:`fit`. The caller gives one folder per (dataset, category, K, reference-draw seed):
        the checkpoint only checks the image count and :meth:`config`, not which images they are."""
        if self.setting != "few_shot":
            if len(images):
                raise ValueError(f"AGPNet built with setting={self.setting!r} takes no references; use setting='few_shot'")
            return
        if not len(images):
            raise ValueError("few-shot AGPNet needs K >= 1 reference images")
        self.reset_decoder()
        self.train_on_images(rotate_flip_augment(images.cpu(), self.few_shot_folds), self.few_shot_epochs,
                             checkpoint_dir=checkpoint_dir, progress=False)

    def train_on_images(
        self, images: torch.Tensor, epochs: int, *, checkpoint_dir: Path | None = None, progress: bool = True
    ) -> dict[str, Any]:
        """AdamW over ``epochs`` epochs of shuffled batches; the EMA teacher follows every
        ``ema_every`` steps. After each epoch decoder, teacher, optimiser, epoch, step counter and
        RNG state are written atomically (with :meth:`config`), so a resumed run continues bit for bit;
        a checkpoint written by another configuration, or for another fingerprint than its folder's
        (:func:`~sowa_lib.training.claim_snapshot_dir`), is refused."""
        device = self.device
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=self.lr)
        generator = torch.Generator(device=device).manual_seed(self.seed)
        state = {"epoch": 0, "step": 0, "loss": []}
        path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
        if path is not None and path.is_file():
            state = self._resume(path, optimizer, generator, len(images), epochs)
        self.decoder.train()
        for epoch in tqdm(range(state["epoch"] + 1, epochs + 1), desc="agpnet", disable=not progress,
                          initial=state["epoch"], total=epochs):
            for group in optimizer.param_groups:
                group["lr"] = self.lr * learning_rate_factor(epoch, epochs, self.lr_decay_fraction)
            losses = []
            for index in self.batches(len(images), generator):
                loss = self.training_loss(images[index.cpu()].to(device), epoch, epochs, generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.grad_clip_norm is not None:
                    nn.utils.clip_grad_norm_(self.decoder.parameters(), self.grad_clip_norm)
                optimizer.step()
                state["step"] += 1
                if self.mean_teacher and state["step"] % self.ema_every == 0:
                    ema_update(self.teacher, self.decoder, self.ema_momentum)
                losses.append(loss.item())
            state["epoch"], state["loss"] = epoch, [*state["loss"], sum(losses) / len(losses)]
            if path is not None:
                self._save(path, optimizer, generator, state, len(images), epochs)
        self.decoder.eval()
        return {"loss": state["loss"], "epochs": epochs, "steps": state["step"], "images": len(images)}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: ``weight_decay`` on ≥ 2-D non-bias tensors only (ViTAD, ``"matrices"``) or on all."""
        named = list(self.decoder.named_parameters())
        if self.weight_decay_params == "all":
            return [{"params": [p for _, p in named], "weight_decay": self.weight_decay}]
        decayed = [p.ndim >= 2 and not name.endswith(".bias") for name, p in named]
        return [{"params": [p for (_, p), d in zip(named, decayed) if d], "weight_decay": self.weight_decay},
                {"params": [p for (_, p), d in zip(named, decayed) if not d], "weight_decay": 0.0}]

    def batches(self, n_images: int, generator: torch.Generator) -> list[torch.Tensor]:
        """One epoch's shuffled index batches; with ``drop_last`` the last partial batch is dropped (ViTAD)."""
        batches = list(torch.randperm(n_images, generator=generator, device=generator.device).split(self.batch_size))
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        if not batches:
            raise ValueError(f"drop_last=True with {n_images} training images < batch_size={self.batch_size} trains nothing; "
                             "lower batch_size or pass drop_last=False")
        return batches

    def _save(self, path: Path, optimizer: torch.optim.Optimizer, generator: torch.Generator, state: dict, n_images: int, epochs: int) -> None:
        atomic_torch_save({
            "model": self.trainable_state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
            "n_images": n_images, "epochs": epochs, "config": self.plain_config(),
            "fingerprint": snapshot_fingerprint(path.parent), **state,
        }, path)

    def _resume(self, path: Path, optimizer: torch.optim.Optimizer, generator: torch.Generator, n_images: int, epochs: int) -> dict:
        saved = torch.load(path, map_location=self.device, weights_only=True)
        if (saved["n_images"], saved["epochs"]) != (n_images, epochs):
            raise ValueError(f"{path} was written for {saved['n_images']} images / {saved['epochs']} epochs, "
                             f"not {n_images} / {epochs}; delete it to start over")
        if saved.get("fingerprint") != snapshot_fingerprint(path.parent):
            raise ValueError(f"{path} was written for another fingerprint than its folder's ({path.parent / SNAPSHOT_MARKER}); "
                             f"delete {path.parent} to start over")
        config, saved_config = self.plain_config(), saved.get("config", {})
        if saved_config != config:
            differ = sorted(k for k in {*config, *saved_config} if saved_config.get(k) != config.get(k))
            raise ValueError(f"{path} was written by another AGPNet configuration (options that differ: {differ}); "
                             f"delete {path.parent} to start over, or resume with the options it was written with")
        self.load_trainable_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"].cpu())
        return {"epoch": saved["epoch"], "step": saved["step"], "loss": list(saved["loss"])}


# ----------------------------------------------------------- values the paper does not state


@dataclass(frozen=True)
class UnstatedValue:
    """One value the AGPNet paper does not state; ``tag`` is a key of :data:`TAGS`."""

    name: str
    value: Any
    tag: str
    note: str


TAGS = {"V": "inherited from ViTAD, not stated in the AGPNet paper", "?": "our choice (the paper and ViTAD are silent)"}

#: Constructor options whose default is [V] or [?]: option -> (tag, note). Their values are read from
#: the signature, so this table cannot drift from the code.
UNSTATED_OPTIONS: dict[str, tuple[str, str]] = {
    "image_size": ("V", "input size in px; a 16×16 token grid at patch 16"),
    "decoder_mlp_ratio": ("V", "timm ViT block default, as ViTAD's decoder; more parameters than Table 9 counts (module docstring)"),
    "weight_decay": ("V", "AdamW weight decay"),
    "noise_gamma": ("?", "γ of eq. 4, on top of the λ(t) schedule"),
    "image_noise_std": ("?", "σ of the image-level Gaussian noise, in normalised pixel units"),
    "random_image_region": ("?", "image-level 'random' noise: a random region of the attention region's area ('whole': every pixel)"),
    "distance": ("V", "per-token anomaly distance, 1 − cos ('l2' option)"),
    "gaussian_sigma": ("V", "σ of the Gaussian smoothing of the upsampled map"),
    "score_pool": ("V", "average-pooling window (stride 1) whose maximum is the image score"),
    "few_shot_epochs": ("?", "None = epochs; the paper gives no few-shot schedule"),
    "fusion": ("V", "a learnable Linear(C, C) on the fused features before the decoder (ADer model/vitad.py)"),
    "weight_decay_params": ("V", "AdamW weight decay on >= 2-D non-bias tensors only (ADer optim/__init__.py)"),
    "grad_clip_norm": ("V", "gradient clipping at this total norm (ADer cfg_common.py)"),
    "drop_last": ("V", "the training loader drops the last partial batch"),
    "image_interpolation": ("V", "image resize to image_size (antialiased, as PIL; ADer vitad_mvtec.py)"),
}


def unstated_values() -> list[UnstatedValue]:
    """Every [V] (inherited from ViTAD) and [?] (our choice) value of this implementation, read from
    the constructor defaults and module constants the code uses (spec ``agpnet``: "label each such
    value in code and notebooks"); fixed behaviours are described in words."""
    defaults = inspect.signature(AGPNet.__init__).parameters
    options = [UnstatedValue(name, defaults[name].default, tag, note) for name, (tag, note) in UNSTATED_OPTIONS.items()]
    constants = [
        UnstatedValue("taps (ViT)", DEFAULT_VIT_TAPS, "?", "0-based blocks (1-based 3/6/9/12): 'shallow + deep' of Table 8"),
        UnstatedValue("taps (CNN)", DEFAULT_CNN_TAPS, "?", "stages at strides 4/8/16 for the CNN backbone ablation"),
        UnstatedValue("lr", f"{BASE_LR:g} × batch_size / {LR_REFERENCE_BATCH}", "V", "initial AdamW learning rate"),
        UnstatedValue("decoder (CNN)", f"dim {CNN_DECODER_DIM}, {CNN_DECODER_HEADS} heads", "?",
                      "backbone ablation (Table 6): ViT-S's width, as a CNN has none to follow"),
        UnstatedValue("CLIP ViT-B weights", f"{CLIP_VIT_B} / {CLIP_PRETRAINED}", "?", "Table 6 does not name the checkpoint"),
    ]
    behaviours = [
        UnstatedValue("decoder layout", "learnable position embedding, no CLS, no final norm", "V", "ReconstructionDecoder"),
        UnstatedValue("training loss", "1 − cos of whole flattened samples", "V", "flat_cosine_loss"),
        UnstatedValue("map upsampling", "bilinear, align_corners=True", "V", "AGPNet.predict"),
        UnstatedValue("target LayerNorms", "no affine parameters", "?", "layer_norm_sum: a learnable scale could shrink the target"),
        UnstatedValue("mask combination", "mean of the min-max normalised prior and teacher masks", "?", "AGPNet.attention_mask"),
        UnstatedValue("teacher mask", "attention each token receives, mean over queries, heads, blocks", "?",
                      "ReconstructionDecoder.attention_received: the decoder has no CLS token"),
        UnstatedValue("few-shot augmentation", "folds/2 rotations by 720°/folds, each with and without h-flip; corners 0", "?",
                      "rotate_flip_augment"),
        UnstatedValue("CNN target", "stages pooled to the /16 grid, LayerNorm-ed, concatenated", "?", "backbone ablation (Table 6)"),
        UnstatedValue("CNN prior", "activation attention: channel mean of squared activations, min-max, mean over stages", "?",
                      "backbone ablation (Table 6): a CNN has no self-attention"),
    ]
    return options + constants + behaviours


def learnable_parameters(**overrides: Any) -> int:
    """Learnable parameters of AGPNet built with ``overrides`` (none: the default, paper configuration),
    the quantity of Table 9's "Learnable Parameters": the decoder, fusion included (the EMA teacher is
    a copy, not learned). The extractor is built with random weights: the count does not depend on them."""
    method = AGPNet(**{"pretrained": None, **overrides})
    return sum(p.numel() for p in method.decoder.parameters() if p.requires_grad)
