"""Frozen open_clip CLIP with the taps WinCLIP, April-GAN and SOWA need.

One wrapper, :class:`ClipBackbone`, built by one factory, :func:`load_clip`::

    clip = load_clip("ViT-L-14-336", "openai", image_size=518, quick_gelu=False)   # April-GAN
    clip = load_clip("tiny-clip", None, image_size=112, quick_gelu=False, seed=0)  # demo / tests
    clip = load_clip("ViT-L-14-336", checkpoint="/path/ViT-L-14-336px.pt", quick_gelu=True)  # a local file
    cls_embedding, taps = clip.encode_image(images, taps=[5, 11, 17, 23])          # 0-based blocks

Conventions (stable API, other methods build on it):

- **Block indices are 0-based**: ``taps=[5, 11, 17, 23]`` are the papers' 1-based layers 6/12/18/24.
- A tap is the **residual-stream output** of that transformer block, no ``ln_post`` and no ``proj``,
  batch-first ``[B, 1 + T, width]`` with the CLS token at index 0 (spec april_gan_winclip_peers §1.2).
- ``cls_embedding`` is the final CLS token through ``ln_post`` then ``@ proj``, L2-normalised
  ``[B, embed_dim]`` (§1.2, §1.5).
- :meth:`ClipBackbone.embed_patches` gives the tokens after CLS + position embedding and before
  ``ln_pre`` (WinCLIP's hook point, §2.2); :meth:`ClipBackbone.encode_tokens` runs any such token
  sequence (e.g. CLS + one window's patches) through ``ln_pre`` and the blocks.
- Text features (:meth:`encode_text`, :meth:`encode_prompt_embeddings`) are returned **un-normalised**
  unless ``normalize=True``: WinCLIP averages raw embeddings, April-GAN normalises first (§1.4, §2.2).
- Weights: ``pretrained`` is an open_clip tag (``"openai"``, ``"laion400m_e31"``) or None (random
  initialisation); a local file of weights is ``checkpoint``. :attr:`ClipBackbone.weights_id` says
  which (``"ViT-L-14-336:openai"``, ``"tiny-clip:random"``, ``"ViT-L-14-336:file:<sha256[:12]>"``).

open_clip 3.x runs its transformers batch-first (spec §4.2); :meth:`_run_block` also handles
sequence-first stacks so the taps are batch-first either way.
"""
from __future__ import annotations

import copy
import math
import os
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.factory import load_checkpoint
from open_clip.pretrained import download_pretrained, get_pretrained_cfg
from torch import nn

from sowa_lib.backbones.taps import layer_norm_sum
from sowa_lib.backbones.weights import downloads_disabled, weights_cache
from sowa_lib.data.download import file_hashes
from sowa_lib.errors import WeightsNotFoundError
from sowa_lib.features import copy_fingerprint, frozen_features, frozen_prompts


@dataclass(frozen=True)
class PretrainedWeights:
    """Where the weights of one (architecture, tag) come from and how they were trained."""

    filename: str
    url: str
    trained_with_quick_gelu: bool


#: The checkpoints the study uses (spec april_gan_winclip_peers §1.1, §2.1). Other open_clip tags work
#: too (open_clip's own table is consulted); these are listed so the error message can name the file.
PRETRAINED: dict[tuple[str, str], PretrainedWeights] = {
    ("ViT-L-14-336", "openai"): PretrainedWeights(
        "ViT-L-14-336px.pt",
        "https://openaipublic.azureedge.net/clip/models/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
        trained_with_quick_gelu=True,
    ),
    ("ViT-B-16-plus-240", "laion400m_e31"): PretrainedWeights(
        "vit_b_16_plus_240-laion400m_e31-8fb26589.pt",
        "https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_16_plus_240-laion400m_e31-8fb26589.pt",
        trained_with_quick_gelu=False,
    ),
    ("ViT-B-16-plus-240", "laion400m_e32"): PretrainedWeights(
        "vit_b_16_plus_240-laion400m_e32-699c4b84.pt",
        "https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_16_plus_240-laion400m_e32-699c4b84.pt",
        trained_with_quick_gelu=False,
    ),
}

#: The frozen-feature cache's name of the CLS embedding beside the (integer) block taps.
CLS_PART = "cls"
#: The attributes of an open_clip ``CLIP`` that its text features depend on (:meth:`ClipBackbone.encode_text`):
#: the prompt cache fingerprints these, not the vision tower, which ``encode_image`` already keys on.
TEXT_TOWER = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")

#: Where open_clip caches URL downloads when no ``cache_dir`` is given (open_clip.pretrained).
OPEN_CLIP_URL_CACHE = Path("~/.cache/clip").expanduser()


def _tiny_config(patch_size: int, image_size: int) -> dict[str, Any]:
    """A few-block CLIP of the standard open_clip ViT family; the vision width is divisible by 8
    (SOWA splits it into 8 heads) and the vocabulary is the real tokenizer's."""
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": image_size, "layers": 4, "width": 64, "head_width": 16, "patch_size": patch_size},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
    }


#: Tiny randomly initialised models for the demo profile and tests, same family as the real ones:
#: ``tiny-clip`` has ViT-L-14-336's patch size 14 (April-GAN, SOWA); ``tiny-clip-b16`` has
#: ViT-B-16-plus-240's patch size 16 (WinCLIP).
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-clip": _tiny_config(patch_size=14, image_size=112),
    "tiny-clip-b16": _tiny_config(patch_size=16, image_size=112),
}


#: Demo-profile settings of the methods that tap ViT-L-14-336's four levels (April-GAN, SOWA): the
#: tiny model at 112 px (an 8×8 grid) with all four of its blocks tapped.
DEMO_TAPPED_CLIP: dict[str, Any] = {"backbone": "tiny-clip", "pretrained": None, "image_size": 112, "taps": (0, 1, 2, 3)}


def model_config(name: str) -> dict[str, Any]:
    """The open_clip config dict of ``name`` (a tiny config or any open_clip built-in name)."""
    if name in TINY_CONFIGS:
        return copy.deepcopy(TINY_CONFIGS[name])
    config = open_clip.get_model_config(name)
    if config is None:
        raise KeyError(f"unknown CLIP model {name!r}; tiny: {sorted(TINY_CONFIGS)}, open_clip: see open_clip.list_models()")
    return config


def resolve_weights(name: str, pretrained: str, cache_dir: str | None = None) -> str:
    """Local file of the open_clip tag ``pretrained`` of ``name`` (cached, or downloaded when allowed).

    Raises :class:`WeightsNotFoundError` naming the file to place and the directory to place it in
    (or, for a file path given as a tag, saying to pass it as ``checkpoint=``).
    """
    cache_dir = cache_dir or (str(weights_cache("open_clip")) if weights_cache("open_clip") else None)
    tag_config = get_pretrained_cfg(name, pretrained)
    if not tag_config:
        hint = "; a local file of weights is passed as checkpoint=" if os.path.sep in pretrained or os.path.isfile(pretrained) else ""
        raise WeightsNotFoundError(
            f"{pretrained!r} is not an open_clip tag of {name}{hint}; "
            f"known tags: {open_clip.list_pretrained_tags_by_model(name)}"
        )
    known = PRETRAINED.get((name, pretrained))
    filename = known.filename if known else os.path.basename(tag_config.get("url", "")) or "<checkpoint>.pt"
    cached = (Path(cache_dir).expanduser() if cache_dir else OPEN_CLIP_URL_CACHE) / filename
    fix = (f"Download {tag_config.get('url') or tag_config.get('hf_hub')} on a machine with internet and either "
           f"put it at {cached} (open_clip's cache) or pass its path as `checkpoint=` (to a method: `backbone_checkpoint=`).")
    if downloads_disabled() and not cached.is_file():
        raise WeightsNotFoundError(f"CLIP weights {name}/{pretrained}: {cached} is missing and downloads are off (HF_HUB_OFFLINE). {fix}")
    try:
        # The URL download (prefer_hf_hub=False) caches a plain file whose name we can tell the user.
        return download_pretrained(tag_config, prefer_hf_hub=False, cache_dir=cache_dir)
    except Exception as error:  # urllib/hf errors differ by version; all mean "not available here"
        raise WeightsNotFoundError(f"CLIP weights {name}/{pretrained} are not cached and cannot be downloaded ({error}). {fix}") from error


def load_weights(model: open_clip.CLIP, path: str) -> None:
    """Load a checkpoint strictly: an OpenAI TorchScript archive (the ``openai`` tag's file) or any
    state dict open_clip reads (``.pt``/``.pth``/``.bin``/``.safetensors``)."""
    if is_torchscript_archive(path):
        state = torch.jit.load(path, map_location="cpu").state_dict()
        for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):  # not weights
            state.pop(key, None)
        model.load_state_dict(state, strict=True)
    else:
        load_checkpoint(model, path, strict=True)


def is_torchscript_archive(path: str) -> bool:
    """True for an OpenAI TorchScript release (a zip holding ``constants.pkl``)."""
    return zipfile.is_zipfile(path) and any(n.endswith("constants.pkl") for n in zipfile.ZipFile(path).namelist())


@torch.no_grad()
def round_like_openai(model: nn.Module) -> None:
    """Round, in place and through fp16, the tensors that OpenAI's ``clip.model.convert_weights`` makes
    fp16 before the official loaders copy a checkpoint into them: Conv/Linear weights and biases,
    ``nn.MultiheadAttention`` input projections and biases, and ``text_projection`` / ``proj``.
    Embeddings, LayerNorms, ``logit_scale`` keep the file's values. So a model loaded from any file
    equals what OpenAI's ``clip.load`` (SOWA) or open_clip's ``load_openai_model`` (April-GAN) give on
    CPU (built in fp16, then ``.float()``)."""
    attention = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "bias_k", "bias_v")
    for module in model.modules():
        tensors = []
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            tensors += [module.weight, module.bias]
        if isinstance(module, nn.MultiheadAttention):
            tensors += [getattr(module, name) for name in attention]
        tensors += [getattr(module, name, None) for name in ("text_projection", "proj")]
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                tensor.copy_(tensor.half().to(tensor.dtype))


def resize_position_embedding(position_embedding: torch.Tensor, grid_size: int) -> torch.Tensor:
    """``[1 + g*g, C]`` -> ``[1 + grid_size², C]``: bicubic (antialiased, ``align_corners=False``) on the
    patch grid, CLS position kept (spec april_gan_winclip_peers §1.1, as April-GAN's 518-px factory)."""
    cls_position, patch_positions = position_embedding[:1], position_embedding[1:]
    old = math.isqrt(patch_positions.shape[0])
    if old == grid_size:
        return position_embedding
    grid = patch_positions.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(grid_size, grid_size), mode="bicubic", align_corners=False, antialias=True)
    return torch.cat([cls_position, grid.permute(0, 2, 3, 1).reshape(grid_size * grid_size, -1)])


class ClipBackbone(nn.Module):
    """A frozen open_clip ``CLIP`` (``.model``) with tap-aware image and prompt-aware text paths.

    Attributes: ``visual`` (open_clip VisionTransformer: ``visual.proj``, ``visual.ln_post``),
    ``blocks`` (the vision blocks; ``blocks[i].attn`` is an ``nn.MultiheadAttention`` with
    ``in_proj_weight`` and ``out_proj``), ``token_embedding``, ``image_size``, ``grid_size`` (patches
    per side), ``width`` (vision width), ``embed_dim``, ``text_width``, ``tokenizer``, ``name``,
    ``pretrained`` (the open_clip tag or None), ``weights_id`` (what the weights are: :func:`clip_weights_id`).
    """

    def __init__(self, model: open_clip.CLIP, name: str, pretrained: str | None, weights_id: str) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.pretrained = pretrained
        self.weights_id = weights_id
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model.context_length)
        # Every resize starts from the loaded grid, so resizing twice never compounds interpolation.
        self.register_buffer("native_position_embedding", model.visual.positional_embedding.detach().clone(), persistent=False)

    # ---------------------------------------------------------------- geometry
    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.visual.transformer.resblocks

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.token_embedding

    @property
    def image_size(self) -> int:
        return self.visual.image_size[0]

    @property
    def patch_size(self) -> int:
        return self.visual.patch_size[0]

    @property
    def grid_size(self) -> int:
        return self.visual.grid_size[0]

    @property
    def width(self) -> int:
        return self.visual.conv1.out_channels

    @property
    def embed_dim(self) -> int:
        return self.visual.proj.shape[1]

    @property
    def text_width(self) -> int:
        return self.model.token_embedding.embedding_dim

    def set_image_size(self, image_size: int) -> None:
        """Run at ``image_size`` (a multiple of the patch size) by resizing the position grid (§1.1)."""
        if image_size % self.patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {self.patch_size}")
        grid = image_size // self.patch_size
        resized = resize_position_embedding(self.native_position_embedding, grid)
        self.visual.positional_embedding = nn.Parameter(resized, requires_grad=False)
        self.visual.image_size = (image_size, image_size)
        self.visual.grid_size = (grid, grid)

    # ---------------------------------------------------------------- image path
    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + T, width]``: patch embedding, CLS prepended, position embedding added; before
        ``ln_pre`` (where anomalib hooks WinCLIP's window path, spec §2.2)."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f"{self.name} runs at {self.image_size}px; got images {tuple(images.shape)}")
        visual = self.visual
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)

    def encode_tokens(
        self, tokens: torch.Tensor, taps: Sequence[int] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run ``[B, L, width]`` token sequences (CLS first, from :meth:`embed_patches`) through
        ``ln_pre`` and every block; returns the L2-normalised CLS embedding and the raw outputs of
        the 0-based blocks ``taps``, in the order asked."""
        self._check_taps(taps)
        wanted = {index: None for index in taps}
        x = self.visual.ln_pre(tokens)
        for index, block in enumerate(self.blocks):
            x = self._run_block(block, x)
            if index in wanted:
                wanted[index] = x
        return self.pool(x), [wanted[index] for index in taps]

    def encode_image(
        self, images: torch.Tensor, taps: Sequence[int] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normalised images ``[B, 3, S, S]`` -> (CLS embedding ``[B, embed_dim]`` L2-normalised,
        ``[tap tokens [B, 1 + T, width] for each 0-based block index in taps]``); served by the
        frozen-feature cache when the runner holds one active (:mod:`sowa_lib.features`)."""
        self._check_taps(taps)
        parts = frozen_features(self.visual, "encode_image", images, (CLS_PART, *taps), self._image_parts)
        return parts[CLS_PART], [parts[index] for index in taps]

    def _image_parts(self, images: torch.Tensor, parts: Sequence[int | str]) -> dict[int | str, torch.Tensor]:
        taps = [part for part in parts if part != CLS_PART]
        cls_embedding, tapped = self.encode_tokens(self.embed_patches(images), taps)
        return {CLS_PART: cls_embedding, **dict(zip(taps, tapped))}

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Last-block tokens ``[B, L, width]`` -> L2-normalised ``ln_post(CLS) @ proj``."""
        return F.normalize(self.visual.ln_post(tokens[:, 0]) @ self.visual.proj, dim=-1)

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.visual.transformer.batch_first:
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    def _check_taps(self, taps: Sequence[int]) -> None:
        bad = [t for t in taps if not 0 <= t < len(self.blocks)]
        if bad:
            raise IndexError(f"taps {bad} out of range: {self.name} has blocks 0..{len(self.blocks) - 1} (0-based)")

    # ---------------------------------------------------------------- text path
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``[N, context_length]`` token ids (SOT ... EOT, zero padded) on the model's device."""
        return self.tokenizer(list(texts)).to(self.model.positional_embedding.device)

    @staticmethod
    def eot_positions(token_ids: torch.Tensor) -> torch.Tensor:
        """Index of the end-of-text token, the largest id of the vocabulary (as open_clip's argmax pool)."""
        return token_ids.argmax(dim=-1)

    def encode_text(self, texts: Sequence[str], normalize: bool = False) -> torch.Tensor:
        """``[N, embed_dim]`` text features of ``texts`` (EOT token -> ln_final -> text_projection);
        served by the frozen-feature cache when the runner holds one active (:func:`frozen_prompts`)."""
        features = frozen_prompts(self.model, TEXT_TOWER, self.tokenize(texts), self._text_features)
        return F.normalize(features, dim=-1) if normalize else features

    def _text_features(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Features of token ids ``[N, context_length]``. With the causal mask of CLIP's text tower
        the EOT token sees only the tokens before it, so the padding after the list's longest
        sentence is cut: the same function, about 5x less work for prompt ensembles (April-GAN's
        sentences are ~15 of 77 tokens), equal to the full-length pass to float rounding."""
        eot = self.eot_positions(token_ids)
        length = int(eot.max()) + 1 if self.model.attn_mask is not None and len(token_ids) else token_ids.shape[1]
        return self.encode_prompt_embeddings(self.token_embedding(token_ids[:, :length]), eot)

    def encode_prompt_embeddings(
        self, embeddings: torch.Tensor, eot_positions: torch.Tensor, normalize: bool = False
    ) -> torch.Tensor:
        """Token *embeddings* ``[N, L, text_width]`` (e.g. learnable CoOp context vectors spliced
        between token embeddings; ``L <= context_length``) through the frozen text transformer with
        its causal mask; features at ``eot_positions`` ``[N]`` -> ln_final -> text_projection."""
        model = self.model
        length = embeddings.shape[1]
        x = embeddings + model.positional_embedding[:length].to(embeddings.dtype)
        mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
        transformer = model.transformer
        if transformer.batch_first:
            x = transformer(x, attn_mask=mask)
        else:
            x = transformer(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        x = model.ln_final(x)
        x = x[torch.arange(len(x), device=x.device), eot_positions]
        projection = model.text_projection
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        return F.normalize(x, dim=-1) if normalize else x


def clip_weights_id(name: str, pretrained: str | None = None, checkpoint: str | Path | None = None) -> str:
    """``"<name>:file:<sha256[:12]>"`` for a local file of weights, else ``"<name>:<tag>"`` for an
    open_clip tag or ``"<name>:random"`` for a random initialisation (the glossary's ``weights_id``)."""
    if checkpoint is not None:
        return f"{name}:file:{file_hashes(Path(checkpoint))['sha256'][:12]}"
    return f"{name}:{pretrained or 'random'}"


def load_clip(
    name: str,
    pretrained: str | None = None,
    *,
    checkpoint: str | Path | None = None,
    image_size: int | None = None,
    quick_gelu: bool,
    device: str | torch.device = "cpu",
    seed: int = 0,
    cache_dir: str | None = None,
    round_fp16: bool | None = None,
) -> ClipBackbone:
    """Build a frozen :class:`ClipBackbone`.

    name: a tiny config (``"tiny-clip"``, ``"tiny-clip-b16"``) or an open_clip model name
        (``"ViT-L-14-336"``, ``"ViT-B-16-plus-240"``, ...).
    pretrained: ``None`` (random init from ``seed``) or an open_clip tag (``"openai"``,
        ``"laion400m_e31"``), found in open_clip's cache or downloaded.
    checkpoint: a local file of weights (open_clip state dict or OpenAI JIT archive), read instead of
        the tag's cached file: a copy of that file (``pretrained`` still names the tag) or any other.
    image_size: run resolution; when it differs from the config's, the position grid is resized
        bicubically (spec §1.1). ``None`` keeps the native size.
    quick_gelu: the MLP activation, always explicit. OpenAI weights were trained with QuickGELU, but
        April-GAN's 518-px path runs them with exact GELU (spec §1.1), so both must be selectable.
    round_fp16: round loaded weights through fp16 as the OpenAI loaders do (:func:`round_like_openai`).
        ``None`` (default): for OpenAI-format checkpoints only, i.e. the ``"openai"`` tag or a
        TorchScript archive (whose released weights are fp16 already, so it changes nothing there);
        SOWA and April-GAN pass True, as their loaders round any file they are given. Random
        initialisation (no tag, no checkpoint) is never rounded.

    A process keeps its last :func:`kept_builds` (2) builds on the CPU, keyed by every argument but
    ``device`` (a file by path, size and modification time), and returns a copy that shares no
    tensor with them: the runner builds a method once per job, and the same backbone again is a
    memory copy instead of a random initialisation (about 6 s for ViT-L on a CPU) or a file read.
    The copy carries the build's weights fingerprint (:func:`sowa_lib.features.copy_fingerprint`).
    """
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise WeightsNotFoundError(f"CLIP weights {name}: checkpoint {checkpoint} does not exist")
    if checkpoint is not None:
        weights = str(checkpoint)
    else:
        weights = resolve_weights(name, pretrained, cache_dir) if pretrained is not None else None
    if torch.get_default_device().type == "meta" or torch.device(device).type == "meta":  # shapes only: nothing to keep
        return _build(name, pretrained, checkpoint, weights, round_fp16, image_size, quick_gelu, seed).to(device)
    keep = kept_builds()
    key = (name, pretrained, checkpoint is not None, _file_identity(weights), image_size, quick_gelu, seed, round_fp16,
           str(torch.get_default_device()))
    built = _BUILT.pop(key, None)
    if built is None:
        built = _build(name, pretrained, checkpoint, weights, round_fp16, image_size, quick_gelu, seed)
    _BUILT[key] = built  # most recently used last
    while len(_BUILT) > keep:
        _BUILT.popitem(last=False)
    return _independent_copy(built, device) if key in _BUILT else built.to(device)


#: How many built backbones one process keeps, on the CPU, to copy from (:func:`load_clip`), unless
#: :data:`KEEP_BUILT_ENV` says otherwise: the runner builds a method once per job, and a random
#: ViT-L's initialisation alone takes ~6 s on a CPU.
KEEP_BUILT = 2
#: Environment variable overriding :data:`KEEP_BUILT` (``0``: keep nothing, every call builds; for a
#: machine short of RAM, since a kept ViT-L is 1.7 GB).
KEEP_BUILT_ENV = "SOWA_KEEP_BUILT"


def kept_builds() -> int:
    """How many builds :func:`load_clip` keeps now (:data:`KEEP_BUILT_ENV`, else :data:`KEEP_BUILT`)."""
    value = os.environ.get(KEEP_BUILT_ENV, "").strip()
    if not value:
        return KEEP_BUILT
    if not value.isdigit():
        raise ValueError(f"{KEEP_BUILT_ENV}={value!r}: give how many built backbones to keep, e.g. 0 or 2")
    return int(value)


_BUILT: "OrderedDict[tuple, ClipBackbone]" = OrderedDict()


def _build(name: str, pretrained: str | None, checkpoint: str | Path | None, weights: str | None,
           round_fp16: bool | None, image_size: int | None, quick_gelu: bool, seed: int) -> ClipBackbone:
    config = model_config(name)
    config.pop("quick_gelu", None)  # the argument decides, not the config name
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**config, quick_gelu=quick_gelu)
    if weights is not None:
        load_weights(model, weights)
        if round_fp16 or (round_fp16 is None and (pretrained == "openai" or is_torchscript_archive(weights))):
            round_like_openai(model)
    backbone = ClipBackbone(model, name, pretrained, clip_weights_id(name, pretrained, checkpoint))
    if image_size is not None:
        backbone.set_image_size(image_size)
    return backbone


def _independent_copy(built: ClipBackbone, device: str | torch.device) -> ClipBackbone:
    """A copy of ``built`` that shares no tensor with it (a method may load weights into its
    backbone), on ``device``, with ``built``'s weights fingerprints (:func:`features.copy_fingerprint`).
    Each parameter and buffer is copied straight to ``device`` (no second CPU copy of a ViT-L on its
    way to a GPU); the rest of the module is deep-copied around them."""
    memo: dict[int, Any] = {id(built.tokenizer): built.tokenizer}
    for tensor in (*built.parameters(), *built.buffers()):
        moved = tensor.detach().to(device, copy=True)
        memo[id(tensor)] = nn.Parameter(moved, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else moved
    backbone = copy.deepcopy(built, memo)
    copy_fingerprint(built.visual, backbone.visual)
    copy_fingerprint(built.model, backbone.model, TEXT_TOWER)
    return backbone


def _file_identity(path: str | None) -> tuple | None:
    """What tells a weights file apart from another at the same path (a newer download or copy)."""
    if path is None:
        return None
    stat = Path(path).stat()
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns


def as_backbone(backbone: ClipBackbone | str, pretrained: str | None, **options: Any) -> ClipBackbone:
    """A method's ``backbone`` argument: an already built :class:`ClipBackbone` (shared between methods
    or a test's tiny model) or a name for :func:`load_clip`; a built one is resized to ``image_size``."""
    if isinstance(backbone, ClipBackbone):
        if options.get("image_size") and options["image_size"] != backbone.image_size:
            backbone.set_image_size(options["image_size"])
        return backbone
    return load_clip(backbone, pretrained, **options)


def multihead_attention_weights(attention: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """``softmax(q kᵀ/√d)`` ``[B, heads, L, L]`` of an ``nn.MultiheadAttention`` on batch-first ``x``
    (open_clip's fused attention returns no weights)."""
    batch, length, width = x.shape
    heads = attention.num_heads
    q, k, _ = F.linear(x, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
    q, k = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k))
    return (q @ k.transpose(-2, -1) / math.sqrt(width // heads)).softmax(dim=-1)


class ClipTaps(nn.Module):
    """AGPNet's extractor on a CLIP ViT, for its backbone ablation (Table 6, spec agpnet §1–2): patch
    tokens of the taps fused by eq. 1 (:func:`~sowa_lib.backbones.taps.layer_norm_sum`); prior =
    CLS→patch attention recomputed from each attention block's ``ln_1`` output, averaged over heads
    and blocks."""

    def __init__(self, backbone: ClipBackbone, taps: Sequence[int], attention_blocks: Sequence[int]) -> None:
        super().__init__()
        self.backbone, self.taps, self.attention_blocks = backbone, tuple(taps), tuple(attention_blocks)
        self.width, self.grid_size = backbone.width, backbone.grid_size
        self.num_heads = backbone.blocks[0].attn.num_heads

    @property
    def weights_id(self) -> str:
        return self.backbone.weights_id

    @torch.no_grad()
    def forward(self, images: torch.Tensor, with_prior: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Target ``F`` ``[N, T, width]`` and, when ``with_prior``, the prior ``[N, T]`` (else None)."""
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
            rows = [multihead_attention_weights(self.backbone.blocks[i].attn, inputs[i])[:, :, 0, 1:] for i in self.attention_blocks]
            prior = torch.stack(rows, dim=1).mean(dim=(1, 2))
        return layer_norm_sum([t[:, 1:] for t in taps]), prior

    def frozen_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The plain CLIP image encoder: what speed measures against."""
        return self.backbone.encode_image(images)[0]
