"""Frozen DINO ViT (timm) with block taps and explicit CLS attention, for AGPNet (spec agpnet §1–2).

One wrapper, :class:`DinoBackbone`, built by one factory, :func:`load_dino`::

    dino = load_dino()                                   # vit_small_patch16_224, timm tag "dino", 256 px (AGPNet)
    dino = load_dino(pretrained=None, checkpoint="/path/dino_deitsmall16_pretrain.pth")  # local file
    dino = load_dino(TINY_DINO, pretrained=None, image_size=128, seed=0)  # demo / tests
    taps, cls_attention = dino(images, taps=[2, 5, 8, 11], attention_blocks=[2, 5, 8, 11])
    extractor = DinoTaps(dino, taps=[2, 5, 8, 11], attention_blocks=[2, 5, 8, 11])  # AGPNet's target and prior

Conventions (the same as :mod:`sowa_lib.backbones.clip`):

- **Block indices are 0-based**: ``[2, 5, 8, 11]`` are the 1-based blocks 3/6/9/12 of the specs.
- A tap is the **patch tokens** ``[B, T, width]`` (prefix/CLS token removed) of that block's output,
  with no final LayerNorm, as ViTAD takes them (datasets_metrics_agpnet §1.5).
- ``pretrained`` is a timm pretrained tag of the architecture (``"dino"``: timm's
  ``vit_small_patch16_224.dino``) or None (random init); a local file of weights is ``checkpoint``.
  :attr:`DinoBackbone.weights_id` names them: ``"<arch>:<tag>"``, ``"<arch>:random"`` or
  ``"<arch>:file:<sha256[:12]>"``.
- The CLS attention of a block is its softmax attention row of the CLS query over the patch keys,
  ``[B, heads, T]``. timm 1.0.31 runs fused ``scaled_dot_product_attention``, which never materialises
  the weights, so :func:`explicit_attention` recomputes them from the block's own ``qkv`` projection.

The position grid is resampled from the 224-px checkpoint to the run size by timm's checkpoint
filter (bicubic), as ViTAD builds the model with ``img_size=256`` (datasets_metrics_agpnet §1.5).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import timm
import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from sowa_lib.backbones.taps import layer_norm_sum
from sowa_lib.backbones.weights import weights_cache
from sowa_lib.errors import WeightsNotFoundError
from sowa_lib.features import frozen_features

#: The AGPNet / ViTAD extractor: DINO ViT-S/16 (agpnet spec §1 [P]), timm's architecture and its DINO tag.
DINO_VIT_S16, DINO_TAG = "vit_small_patch16_224", "dino"
#: Run size of ViTAD, inherited by AGPNet (datasets_metrics_agpnet §1.5 [V]).
DINO_IMAGE_SIZE = 256
#: Where the checkpoint can be fetched on a machine with internet (timm's pretrained config).
DINO_DOWNLOADS = {
    DINO_VIT_S16: (
        "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
        "https://huggingface.co/timm/vit_small_patch16_224.dino (model.safetensors)",
    ),
}
#: A few-block ViT of the same timm family (patch 16, CLS token, pre-norm blocks, qkv bias) for the
#: demo profile and tests; random weights. Width 48 keeps ViT-S's 6 heads (head width 8).
TINY_DINO = "tiny-dino"
_TINY_ARGS = {"embed_dim": 48, "depth": 4, "num_heads": 6}
#: Names of the parts :meth:`DinoBackbone.forward` asks the frozen-feature cache for: ``(TAP, block)``
#: and ``(ATTENTION, block)``.
TAP, ATTENTION = "tap", "attention"


def explicit_attention(block: Block, tokens: torch.Tensor) -> torch.Tensor:
    """Softmax attention weights ``[B, heads, L, L]`` of a timm ``Block`` on its input ``tokens``.

    ``softmax(q kᵀ · head_dim^-1/2)`` with ``q, k`` from ``block.attn.qkv(block.norm1(tokens))``
    (and the block's q/k norms), i.e. exactly the weights the fused kernel applies.
    """
    attention = block.attn
    batch, length, _ = tokens.shape
    qkv = attention.qkv(block.norm1(tokens)).reshape(batch, length, 3, attention.num_heads, attention.head_dim)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attention.q_norm(q), attention.k_norm(k)
    return (q * attention.scale @ k.transpose(-2, -1)).softmax(dim=-1)


class DinoBackbone(nn.Module):
    """A frozen timm ``VisionTransformer`` (``.model``) returning block taps and CLS attention maps.

    Attributes: ``name`` (architecture), ``weights_id`` (what the weights came from), ``image_size``,
    ``grid_size`` (patches per side), ``width`` (token dim), ``num_heads``, ``depth``.
    """

    def __init__(self, model: VisionTransformer, name: str, weights_id: str) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.weights_id = weights_id

    @property
    def image_size(self) -> int:
        return self.model.patch_embed.img_size[0]

    @property
    def grid_size(self) -> int:
        return self.model.patch_embed.grid_size[0]

    @property
    def width(self) -> int:
        return self.model.embed_dim

    @property
    def num_heads(self) -> int:
        return self.model.blocks[0].attn.num_heads

    @property
    def depth(self) -> int:
        return len(self.model.blocks)

    def train(self, mode: bool = True) -> "DinoBackbone":
        """Always in eval mode: the extractor is frozen (ViTAD ``frozen_layers=['net_t']`` [V])."""
        return super().train(False)

    @torch.no_grad()
    def forward(
        self, images: torch.Tensor, taps: Sequence[int], attention_blocks: Sequence[int] = ()
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Normalised images ``[B, 3, S, S]`` -> (patch tokens ``[B, T, width]`` of each 0-based block in
        ``taps``, in that order; CLS attention ``[B, len(attention_blocks), heads, T]`` or None).

        Blocks after the deepest one asked for are not run. Served by the frozen-feature cache when
        the runner holds one active (:mod:`sowa_lib.features`).
        """
        self._check_blocks([*taps, *attention_blocks])
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"{self.name} runs at {self.image_size}px; got images {tuple(images.shape)}")
        wanted = [(TAP, i) for i in taps] + [(ATTENTION, i) for i in attention_blocks]
        parts = frozen_features(self.model, "forward", images, wanted, self._parts)
        tap_tokens = [parts[TAP, index] for index in taps]
        cls_attention = torch.stack([parts[ATTENTION, i] for i in attention_blocks], dim=1) if attention_blocks else None
        return tap_tokens, cls_attention

    def _parts(self, images: torch.Tensor, parts: Sequence[tuple[str, int]]) -> dict[tuple[str, int], torch.Tensor]:
        """``{(TAP, block): patch tokens, (ATTENTION, block): CLS attention [B, heads, T]}``."""
        model, prefix = self.model, self.model.num_prefix_tokens
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
        out: dict[tuple[str, int], torch.Tensor] = {}
        for index in range(max(block for _, block in parts) + 1):
            block = model.blocks[index]
            if (ATTENTION, index) in parts:
                out[ATTENTION, index] = explicit_attention(block, x)[:, :, 0, prefix:]
            x = block(x)
            if (TAP, index) in parts:
                out[TAP, index] = x[:, prefix:]
        return out

    def _check_blocks(self, blocks: Sequence[int]) -> None:
        if not blocks:
            raise ValueError("ask for at least one tap")
        bad = [b for b in blocks if not 0 <= b < self.depth]
        if bad:
            raise IndexError(f"blocks {bad} out of range: {self.name} has blocks 0..{self.depth - 1} (0-based)")


def _create(name: str, image_size: int, **kwargs) -> VisionTransformer:
    if kwargs.get("pretrained") and weights_cache("timm"):
        kwargs["cache_dir"] = weights_cache("timm")
    if name == TINY_DINO:
        return timm.create_model("vit_small_patch16_224", img_size=image_size, num_classes=0, **_TINY_ARGS, **kwargs)
    return timm.create_model(name, img_size=image_size, num_classes=0, **kwargs)


def _weights_error(name: str, source: str, error: Exception) -> WeightsNotFoundError:
    urls = DINO_DOWNLOADS.get(name, (f"the timm weights of {name}",))
    return WeightsNotFoundError(
        f"DINO weights for {name} ({source!r}) are not available here ({error}). On a machine with internet "
        f"download {' or '.join(urls)}, then pass the file's path as `checkpoint=` (AGPNet: "
        f"`build('agpnet', pretrained=None, backbone_checkpoint='/path/to/dino_deitsmall16_pretrain.pth')`), or put "
        f"the Hugging Face snapshot in the HF cache (HF_HOME) so that `pretrained={DINO_TAG!r}` finds it."
    )


def load_dino(
    name: str = DINO_VIT_S16,
    pretrained: str | None = DINO_TAG,
    *,
    checkpoint: str | Path | None = None,
    image_size: int = DINO_IMAGE_SIZE,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> DinoBackbone:
    """Build a frozen :class:`DinoBackbone`.

    name: a timm ViT architecture (default ``vit_small_patch16_224``) or ``"tiny-dino"``.
    pretrained: a timm pretrained tag of ``name`` (default ``"dino"``: ``vit_small_patch16_224.dino``,
        from the Hugging Face cache or downloaded), or ``None``: random init from ``seed``
        (``tiny-dino`` has no published weights).
    checkpoint: a local file of weights (original DINO ``.pth`` or timm state dict; position grid
        resampled by timm), loaded instead of a tag: pass ``pretrained=None`` with it.
    image_size: run resolution, a multiple of 16 (ViTAD and AGPNet: 256 [V]).
    """
    if pretrained is not None and checkpoint is not None:
        raise ValueError(f"pass either pretrained (a timm tag, got {pretrained!r}) or checkpoint (a file), not both")
    if name == TINY_DINO and pretrained is not None:
        raise ValueError("tiny-dino has no published weights; use pretrained=None, or a local file as checkpoint=")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if checkpoint is not None:
            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise _weights_error(name, str(checkpoint), FileNotFoundError(f"no file at {path}"))
            model = _create(name, image_size, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
            weights_id = f"{name}:file:{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
        elif pretrained is not None:
            try:
                model = _create(f"{name}.{pretrained}", image_size, pretrained=True)
            except Exception as error:  # hub/urllib errors differ by version; all mean "not available"
                raise _weights_error(name, pretrained, error) from error
            weights_id = f"{name}:{pretrained}"
        else:
            model = _create(name, image_size, pretrained=False)
            weights_id = f"{name}:random"
    return DinoBackbone(model, name, weights_id).to(device)


class DinoTaps(nn.Module):
    """AGPNet's extractor on a DINO ViT (spec agpnet §1–2): the taps fused by eq. 1
    (:func:`~sowa_lib.backbones.taps.layer_norm_sum`); prior = CLS→patch attention of
    ``attention_blocks`` (:func:`explicit_attention`), averaged over heads and blocks ("element-wise
    average pooling") [P]."""

    def __init__(self, backbone: DinoBackbone, taps: Sequence[int], attention_blocks: Sequence[int]) -> None:
        super().__init__()
        self.backbone, self.taps, self.attention_blocks = backbone, tuple(taps), tuple(attention_blocks)
        self.width, self.num_heads, self.grid_size = backbone.width, backbone.num_heads, backbone.grid_size

    @property
    def weights_id(self) -> str:
        return self.backbone.weights_id

    def forward(self, images: torch.Tensor, with_prior: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Target ``F`` ``[N, T, width]`` and, when ``with_prior``, the prior ``[N, T]`` (else None)."""
        taps, attention = self.backbone(images, self.taps, self.attention_blocks if with_prior else ())
        return layer_norm_sum(taps), None if attention is None else attention.mean(dim=(1, 2))

    def frozen_forward(self, images: torch.Tensor) -> torch.Tensor:
        """timm's plain forward of the frozen ViT (``forward_features``): what speed measures against."""
        return self.backbone.model.forward_features(images)
