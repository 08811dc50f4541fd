"""The values the AGPNet paper does not state (spec agpnet: "label each such value in code and
notebooks"), read from the code so that the table cannot drift from it, and the learnable-parameter
count of Table 9."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from sowa_lib.methods.agpnet.extractor import CLIP_PRETRAINED, CLIP_VIT_B, DEFAULT_CNN_TAPS, DEFAULT_VIT_TAPS
from sowa_lib.methods.agpnet.model import AGPNet, BASE_LR, CNN_DECODER_DIM, CNN_DECODER_HEADS, LR_REFERENCE_BATCH


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
    "decoder_mlp_ratio": ("V", "timm ViT block default, as ViTAD's decoder; more parameters than Table 9 counts (sowa_lib.methods.agpnet docstring)"),
    "weight_decay": ("V", "AdamW weight decay"),
    "noise_gamma": ("?", "γ of eq. 4, on top of the λ(t) schedule"),
    "image_noise_std": ("?", "σ of the image-level Gaussian noise, in normalised pixel units"),
    "random_image_region": ("?", "image-level 'random' noise: a random region of the attention region's area ('whole': every pixel)"),
    "distance": ("V", "per-token anomaly distance, 1 − cos ('l2' option)"),
    "smoothing_sigma": ("V", "σ of the Gaussian smoothing of the upsampled map"),
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
        UnstatedValue("learning_rate", f"{BASE_LR:g} × batch_size / {LR_REFERENCE_BATCH}", "V", "initial AdamW learning rate"),
        UnstatedValue("decoder (CNN)", f"dim {CNN_DECODER_DIM}, {CNN_DECODER_HEADS} heads", "?",
                      "backbone ablation (Table 6): ViT-S's width, as a CNN has none to follow"),
        UnstatedValue("CLIP ViT-B weights", f"{CLIP_VIT_B} / {CLIP_PRETRAINED}", "?", "Table 6 does not name the checkpoint"),
    ]
    behaviours = [
        UnstatedValue("decoder layout", "learnable position embedding, no CLS, no final norm", "V", "ReconstructionDecoder"),
        UnstatedValue("training loss", "1 − cos of whole flattened samples", "V", "flat_cosine_loss"),
        UnstatedValue("map upsampling", "bilinear, align_corners=True", "V", "AGPNet.predict"),
        UnstatedValue("target LayerNorms", "no affine parameters", "?", "backbones.taps.layer_norm_sum: a learnable scale could shrink the target"),
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
