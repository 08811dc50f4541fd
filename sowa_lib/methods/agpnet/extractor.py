"""AGPNet's frozen extractor (spec agpnet §1–2): which tap adapter of :mod:`sowa_lib.backbones` a
``backbone`` option builds, with which weights and taps. The adapters give the target ``F`` (eq. 1)
and the attention prior: :class:`~sowa_lib.backbones.dino.DinoTaps` (the paper's DINO ViT-S),
:class:`~sowa_lib.backbones.clip.ClipTaps` and :class:`~sowa_lib.backbones.cnn.CnnTaps` (Table 6's
backbone ablation)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import nn

from sowa_lib.backbones.clip import ClipBackbone, ClipTaps, as_backbone as as_clip_backbone, model_config as clip_model_config
from sowa_lib.backbones.cnn import BACKBONES as CNN_BACKBONES, CnnTaps, TappedCNN, build_backbone as build_cnn
from sowa_lib.backbones.dino import DINO_TAG, DinoBackbone, DinoTaps, load_dino

#: Default taps per backbone family. ViTs: 0-based blocks 2/5/8/11 = the spec's 1-based 3/6/9/12
#: ("shallow + deep", Table 8) [V-style, ?]. CNNs: strides 4/8/16 [?].
DEFAULT_VIT_TAPS = (2, 5, 8, 11)
DEFAULT_CNN_TAPS = ("layer1", "layer2", "layer3")
#: "CLIP (ViT-B)" of Table 6 is ``backbone=CLIP_VIT_B``; the exact checkpoint is not stated [?].
CLIP_VIT_B, CLIP_PRETRAINED = "ViT-B-16", "openai"
#: The weights ``pretrained="default"`` picks in each family: timm's DINO tag, CLIP ``openai``, torchvision ImageNet.
DEFAULT_WEIGHTS = {"dino": DINO_TAG, "clip": CLIP_PRETRAINED, "cnn": "IMAGENET1K_V1"}

Extractor = DinoTaps | ClipTaps | CnnTaps


def _is_clip_name(name: str | nn.Module) -> bool:
    if not isinstance(name, str):
        return False
    try:
        clip_model_config(name)
    except KeyError:
        return False
    return True


def build_extractor(
    backbone: str | nn.Module, pretrained: str | None, checkpoint: str | Path | None, image_size: int,
    taps: Sequence | None, attention_blocks: Sequence[int] | None,
) -> tuple[Extractor, str]:
    """The frozen extractor adapter for ``backbone`` and the input normalisation it expects.

    ``pretrained``: a weights tag of the backbone's family, ``"default"`` for the family's usual one
    (:data:`DEFAULT_WEIGHTS`) or None (random); ``checkpoint``: a local file of the backbone's
    weights, loaded instead of a tag. Tiny models (names ``tiny*``) are random with their builders'
    fixed seed: they stand in for pretrained weights, so AGPNet's training seed does not change them.
    """
    tiny = isinstance(backbone, str) and backbone.startswith("tiny")

    def tag(family: str) -> str | None:
        if tiny or checkpoint is not None:
            return None
        return DEFAULT_WEIGHTS[family] if pretrained == "default" else pretrained

    if isinstance(backbone, TappedCNN) or backbone in CNN_BACKBONES:
        return CnnTaps(build_cnn(backbone, tag("cnn"), checkpoint), tuple(taps if taps is not None else DEFAULT_CNN_TAPS), image_size), "imagenet"
    vit_taps = tuple(taps if taps is not None else DEFAULT_VIT_TAPS)
    attention = tuple(attention_blocks if attention_blocks is not None else vit_taps)
    if isinstance(backbone, ClipBackbone) or _is_clip_name(backbone):
        weights = tag("clip")
        clip = as_clip_backbone(backbone, weights, checkpoint=checkpoint, image_size=image_size, quick_gelu=weights == "openai")
        return ClipTaps(clip, vit_taps, attention), "clip"
    if not isinstance(backbone, DinoBackbone):
        backbone = load_dino(backbone, tag("dino"), checkpoint=checkpoint, image_size=image_size)
    if backbone.image_size != image_size:
        raise ValueError(f"the DINO backbone runs at {backbone.image_size}px, AGPNet at {image_size}px")
    return DinoTaps(backbone, vit_taps, attention), "imagenet"
