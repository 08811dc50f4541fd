"""WinCLIP / WinCLIP+ as anomalib 2.7.0 implements it (spec april_gan_winclip_peers §2.2).

Zero-shot: the CLS text probability is the image score; 2×2 and 3×3 windows (stride 1) are embedded
by running only [CLS + the window's tokens] (position embeddings included, taken before ``ln_pre``)
through the transformer; window scores are harmonic-aggregated per patch; the map is the harmonic
mean of the image, 2×2 and 3×3 maps. Few-shot (WinCLIP+): memories of the K references' window and
patch embeddings, association ½·(1 − cos) minimised over each memory, arithmetic mean of the three
maps; final map ``(zero-shot + few-shot)/2``, image score ``(s0 + max few-shot map)/2``.

Departures from anomalib, on purpose: references go through the same preprocessing as queries (its
Lightning path leaves them un-normalised, §2.2 "Few-shot bug"); windows are run through the
batch-first transformer correctly (with open_clip 3.x anomalib mixes windows, §4.2).

Fidelity switches (issue #18). anomalib's behaviour is every default; the WinCLIP paper's equations
are not in the study's copy of the paper (abstract only; spec §6 lists them as unverified), so where
the paper is silent the default is anomalib's choice and the alternative is the usual one:

- ``temperature``: 0.07 (anomalib; the paper's is unverified) or e.g. 0.01 (×100, caoyunkang/mala-lab).
- ``use_class_name``: the category in every prompt, or anomalib's default ``"object"``.
- ``templates``: ``"anomalib"`` (21, "a jpeg corrupted photo of the {}." twice, "of a" missing, §2.2)
  or ``"deduplicated"`` (the second copy read as the missing "of a").
- ``abnormal_states``: ``"anomalib"`` (4 states, no "broken", §2.2) or ``"with_broken"`` (the
  paper's list, with "broken {}").
- ``text_averaging``: ``"mean"`` (mean of *un-normalised* prompt embeddings, anomalib §2.2) or
  ``"normalize_mean_normalize"`` (the usual CLIP ensemble, April-GAN's and mala-lab's rule).
- ``patch_layer``: ``"last"`` (WinCLIP+'s patch memory from the last block through ``ln_post``, no
  ``proj``, §2.2) or ``"penultimate"`` (the paper speaks of the penultimate layer: the block before
  the last, through the same ``ln_post``).
- ``zero_shot_mean`` / ``few_shot_mean``: how the [image, 2×2, 3×3] maps (zero-shot) and the
  [patch, 2×2, 3×3] maps (few-shot) are combined: ``"harmonic"`` / ``"arithmetic"`` (anomalib, §2.2;
  the paper is silent) or the other mean.
- ``fusion``: ``"arithmetic"`` (map (zero-shot + few-shot)/2 and score (s0 + max few-shot map)/2,
  anomalib; the paper is silent) or ``"harmonic"`` (2/(1/a + 1/b) for both: caoyunkang's pixel rule
  1/(1/t + 1/v) up to the factor 2, §2.3).
- ``upsample_align_corners`` (False, anomalib's ``F.interpolate`` default) and ``smoothing_sigma``
  (0: no smoothing, anomalib; 4 as PromptAD/SOWA), §2.2 "Output".
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from sowa_lib.backbones.clip import ClipBackbone, as_backbone
from sowa_lib.features import frozen_features
from sowa_lib.methods.base import AnomalyMethod, Prediction, RunContext, check_choice
from sowa_lib.ops import MemoryBank, gaussian_blur, resize_maps
from sowa_lib.prompts import (
    AVERAGING_RULES,
    DEFAULT_CLASS_NAME,
    WINCLIP_ABNORMAL_STATES,
    WINCLIP_TEMPLATE_SETS,
    class_scores,
    class_text_features,
    winclip_ensemble,
)

MEANS = ("harmonic", "arithmetic")
PATCH_LAYERS = ("last", "penultimate")


#: Names of the frozen-feature cache parts of :meth:`WinCLIP.encode` beside the window scales (ints).
IMAGE_PART, PATCH_PART = "image", "patches"


def make_masks(grid_size: tuple[int, int], kernel_size: int, stride: int = 1) -> torch.Tensor:
    """``[kernel², n_windows]`` patch indices of every window, windows row-major (anomalib ``make_masks``)."""
    height, width = grid_size
    if kernel_size > height or kernel_size > width:
        raise ValueError(f"window {kernel_size} larger than the {height}x{width} grid")
    index = torch.arange(height * width, dtype=torch.float32).reshape(1, 1, height, width)
    return F.unfold(index, kernel_size=kernel_size, stride=stride)[0].long()


def window_membership(masks: torch.Tensor, n_patches: int) -> torch.Tensor:
    """``[n_windows, n_patches]`` float: 1 where the window covers the patch."""
    membership = torch.zeros(masks.shape[1], n_patches)
    membership[torch.arange(masks.shape[1]).expand_as(masks), masks] = 1.0
    return membership


def harmonic_aggregation(window_scores: torch.Tensor, grid_size: tuple[int, int], masks: torch.Tensor) -> torch.Tensor:
    """``[B, n_windows]`` -> ``[B, h, w]``: each patch gets (number of covering windows) / Σ 1/score;
    non-finite results (zero scores) become 0, as in anomalib."""
    covers = window_membership(masks, grid_size[0] * grid_size[1]).to(window_scores.device).bool()
    # where(), not a matmul: a zero score's 1/0 = inf times a non-covering 0 would give NaN
    reciprocal_sums = torch.where(covers, (1.0 / window_scores)[:, :, None], 0.0).sum(dim=1)
    aggregated = covers.sum(dim=0) / reciprocal_sums
    return aggregated.nan_to_num(nan=0.0, posinf=0.0).reshape(-1, *grid_size)


def harmonic_mean(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Element-wise ``n / Σ 1/map`` of ``n`` same-shaped maps."""
    return len(maps) / (1.0 / torch.stack(list(maps))).sum(dim=0)


def mean_of(maps: Sequence[torch.Tensor], kind: str) -> torch.Tensor:
    """Element-wise ``"harmonic"`` or ``"arithmetic"`` mean of same-shaped maps."""
    check_choice("mean", kind, MEANS)
    return harmonic_mean(maps) if kind == "harmonic" else torch.stack(list(maps)).mean(dim=0)


class WinCLIP(AnomalyMethod):
    name = "winclip"
    normalization = "clip"
    training_data = "none"
    cached = ("_text_features", "memory")
    profiles = {"demo": {"backbone": "tiny-clip-b16", "pretrained": None, "image_size": 112}}

    def __init__(
        self,
        backbone: ClipBackbone | str = "ViT-B-16-plus-240",
        pretrained: str | None = "laion400m_e31",
        backbone_checkpoint: str | None = None,
        image_size: int = 240,
        scales: Sequence[int] = (2, 3),
        temperature: float = 0.07,
        use_class_name: bool = True,
        templates: str = "anomalib",
        abnormal_states: str = "anomalib",
        text_averaging: str = "mean",
        patch_layer: str = "last",
        zero_shot_mean: str = "harmonic",
        few_shot_mean: str = "arithmetic",
        fusion: str = "arithmetic",
        upsample_align_corners: bool = False,
        smoothing_sigma: float = 0.0,
    ) -> None:
        """Defaults are anomalib 2.7.0's; each option is a fidelity switch of the module docstring.
        ``use_class_name=False`` puts anomalib's default ``"object"`` in every prompt. ``pretrained``:
        an open_clip tag or None (random); ``backbone_checkpoint``: a local file of the CLIP weights instead."""
        super().__init__()
        for option, value, choices in (("templates", templates, WINCLIP_TEMPLATE_SETS), ("abnormal_states", abnormal_states, WINCLIP_ABNORMAL_STATES),
                                       ("text_averaging", text_averaging, AVERAGING_RULES), ("patch_layer", patch_layer, PATCH_LAYERS),
                                       ("zero_shot_mean", zero_shot_mean, MEANS), ("few_shot_mean", few_shot_mean, MEANS), ("fusion", fusion, MEANS)):
            check_choice(option, value, tuple(choices))
        self.clip = as_backbone(backbone, pretrained, checkpoint=backbone_checkpoint, image_size=image_size, quick_gelu=False)
        self.image_size = self.clip.image_size
        self.grid = (self.clip.grid_size, self.clip.grid_size)
        self.scales = tuple(scales)
        self.temperature = temperature
        self.use_class_name = use_class_name
        self.ensemble = winclip_ensemble(templates, abnormal_states, text_averaging)
        self.patch_layer = patch_layer
        self.zero_shot_mean, self.few_shot_mean, self.fusion = zero_shot_mean, few_shot_mean, fusion
        self.upsample_align_corners, self.smoothing_sigma = upsample_align_corners, smoothing_sigma
        for scale in self.scales:
            self.register_buffer(f"masks_{scale}", make_masks(self.grid, scale), persistent=False)
        # memory layers: [patch, window scale 1, window scale 2, ...]; score ½·(1 − cos) (§2.2)
        self.memory = MemoryBank(metric="cosine", scale=0.5)
        self._text_features: dict[str, torch.Tensor] = {}

    def masks(self, scale: int) -> torch.Tensor:
        return getattr(self, f"masks_{scale}")

    def frozen_forward(self, images: torch.Tensor) -> Any:
        """The frozen CLIP image encoder's plain forward (what :mod:`sowa_lib.speed` compares to)."""
        return self.clip.encode_image(images)

    @property
    def weights_id(self) -> str:
        return self.clip.weights_id

    def text_features(self, category: str) -> torch.Tensor:
        """``[2, D]`` averaged embeddings of the normal and anomalous prompts (§2.2), cached; the cache
        follows ``.to()`` / ``.double()`` (:attr:`cached`)."""
        class_name = category if self.use_class_name else DEFAULT_CLASS_NAME
        if class_name not in self._text_features:
            self._text_features[class_name] = class_text_features(self.clip.encode_text, self.ensemble, class_name)
        return self._text_features[class_name]

    # ------------------------------------------------------------------ encoding
    def window_embeddings(self, tokens: torch.Tensor, scale: int) -> torch.Tensor:
        """``[B, n_windows, D]``: every window's [CLS + patches] through the blocks in one batch."""
        masks = self.masks(scale)
        batch, width = tokens.shape[0], tokens.shape[-1]
        patches = tokens[:, 1 + masks.T]  # [B, n_windows, kernel², width]
        cls = tokens[:, :1, None].expand(-1, masks.shape[1], -1, -1)
        windows = torch.cat([cls, patches], dim=2).reshape(-1, 1 + masks.shape[0], width)
        embeddings, _ = self.clip.encode_tokens(windows)
        return embeddings.reshape(batch, masks.shape[1], -1)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Image embedding ``[B, D]``, window embeddings per scale and patch embeddings
        ``[B, T, width]`` (last block, or the penultimate one, through ``ln_post``, no ``proj``), §2.2
        "Image encoding". All frozen: served by the frozen-feature cache when the runner holds one active."""
        parts = [IMAGE_PART, PATCH_PART, *self.scales]
        out = frozen_features(self.clip.visual, f"winclip.encode:{self.patch_layer}", images, parts, self._encode_parts)
        return out[IMAGE_PART], [out[scale] for scale in self.scales], out[PATCH_PART]

    def _encode_parts(self, images: torch.Tensor, parts: Sequence[int | str]) -> dict[int | str, torch.Tensor]:
        tokens = self.clip.embed_patches(images)
        tap = len(self.clip.blocks) - (1 if self.patch_layer == "last" else 2)
        image_embedding, (patch_tokens,) = self.clip.encode_tokens(tokens, taps=[tap])
        windows = {scale: self.window_embeddings(tokens, scale) for scale in parts if isinstance(scale, int)}
        return {IMAGE_PART: image_embedding, PATCH_PART: self.clip.visual.ln_post(patch_tokens[:, 1:]), **windows}

    # ------------------------------------------------------------------ scoring
    def zero_shot_map(self, image_scores: torch.Tensor, windows: list[torch.Tensor], text: torch.Tensor) -> torch.Tensor:
        """Harmonic (``zero_shot_mean``) mean of the image score broadcast and each scale's aggregated window scores."""
        maps = [image_scores[:, None, None].expand(-1, *self.grid)]
        for scale, embeddings in zip(self.scales, windows):
            scores = class_scores(embeddings, text, self.temperature)[..., 1]
            maps.append(harmonic_aggregation(scores, self.grid, self.masks(scale)))
        return mean_of(maps, self.zero_shot_mean)

    def few_shot_map(self, windows: list[torch.Tensor], patches: torch.Tensor) -> torch.Tensor:
        """Arithmetic (``few_shot_mean``) mean of the patch map and each scale's aggregated window association maps."""
        patch_distance, *window_distances = self.memory.distances([patches, *windows])
        maps = [patch_distance.reshape(-1, *self.grid)]
        for scale, distances in zip(self.scales, window_distances):
            maps.append(harmonic_aggregation(distances, self.grid, self.masks(scale)))
        return mean_of(maps, self.few_shot_mean)

    @torch.no_grad()
    def set_references(self, images: torch.Tensor, category: str, context: RunContext | None = None) -> None:
        """Patch and window memories of the K references (§2.2 few-shot); K = 0 clears them."""
        if len(images) == 0:
            self.memory.clear()
            return
        _, windows, patches = self.encode(images.to(self.device))
        self.memory.set([patches, *windows])

    @torch.no_grad()
    def predict(self, images: torch.Tensor, category: str) -> Prediction:
        text = self.text_features(category)
        image_embedding, windows, patches = self.encode(images)
        scores = class_scores(image_embedding, text, self.temperature)[:, 1]
        maps = self.zero_shot_map(scores, windows, text)
        if len(self.memory):
            few_shot = self.few_shot_map(windows, patches)
            maps = mean_of([maps, few_shot], self.fusion)
            scores = mean_of([scores, few_shot.amax(dim=(-2, -1))], self.fusion)
        maps = gaussian_blur(resize_maps(maps, self.image_size, align_corners=self.upsample_align_corners), self.smoothing_sigma)
        return Prediction(scores=scores.float().cpu(), maps=maps.float().cpu())
