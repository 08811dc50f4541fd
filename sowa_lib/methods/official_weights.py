"""The authors' released checkpoints in, ours out, in their official formats (issue 17).

**April-GAN** (ByChelsea/VAND-APRIL-GAN; spec april_gan_winclip_peers §1.7): ``train.py`` saves
``torch.save({'trainable_linearlayer': LinearLayer.state_dict()})``, whose keys are ``fc.<i>.weight``
``[embed_dim, width]`` and ``fc.<i>.bias`` ``[embed_dim]``, one ``nn.Linear`` per tapped layer in
``features_list`` order; ``test.py`` loads them with ``load_state_dict`` (strict). The repository
ships ``exps/pretrained/mvtec_pretrained.pth`` (trained on MVTec AD, used for VisA) and
``visa_pretrained.pth`` (trained on VisA, used for MVTec AD). Ours: ``heads.<i>.{weight,bias}``.

**SOWA** (huzongxiang/sowa; spec sowa §1.3–§1.5, §1.9): a Lightning checkpoint of
``AnomalyCLIPModule`` — ``{'state_dict': {'net.<key>': tensor}, ...}`` with ``net`` = ``AnomalyCLIP``:

- ``visual_encoder.adapters.<l>.blocks.<j>.``: ``norm1``/``norm2`` (LayerNorm), ``mlp.layers.0.weight``
  (the bias-free Linear), ``attn.logit_scale`` ``[heads, 1, 1]``, ``attn.cpb_mlp.{0.weight, 0.bias,
  2.weight}`` (Swin-V2 position-bias MLP); ours ``adapters.<l>.blocks.<j>.`` ``norm1``/``norm2``,
  ``linear.weight``, ``attention.logit_scale``, ``attention.position_bias.mlp.{0.weight, 0.bias, 2.weight}``.
- ``prompt_learner.ctx_pos`` / ``ctx_neg`` ``[1, 1, length, text_width]`` (one class "object", one
  template); ours ``prompts.context`` ``[2, length, text_width]`` (row 0 normal, row 1 abnormal).
- ``cross_fusion.linear.{weight,bias}``: ours ``text_linear.{weight,bias}``.
- ``clip_model.*``: the frozen OpenAI CLIP in open_clip's own key names; ``visual_encoder.clip_model.*``,
  ``text_encoder.*``, ``prompt_learner.clip_model.*``, ``visual_encoder.proj`` and the adapters'
  ``attn.qkv`` / ``attn.proj.*`` are the same CLIP tensors under other names; ``relative_coords_table``,
  ``relative_position_index``, ``attn_mask`` and the prompt learner's ``tokenized_prompts_*`` /
  ``token_prefix_*`` / ``token_suffix_*`` buffers are derived from the configuration.

Loading is strict: every trainable tensor of the method comes from the file and every key of the
file is either mapped or one of the frozen/derived keys above; anything else is an error that names it.
The official formats hold the reference configuration only (SOWA: HFWA adapters with the continuous
position bias and learned logit scale, the text Linear, unshared adapters).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sowa_lib.backbones.weights import downloads_disabled, weights_cache
from sowa_lib.data.download import file_hashes
from sowa_lib.data.prepare import REPO_DATA
from sowa_lib.errors import WeightsNotFoundError
from sowa_lib.methods.sowa_adapter import ContinuousPositionBias, HFWAAdapter

APRIL_GAN_KEY = "trainable_linearlayer"
LIGHTNING_PREFIX = "net."
#: SOWA official (within ``net.``) -> ours, per adapter block; ``{l}``/``{j}`` filled per layer and block.
SOWA_ADAPTER_KEYS = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias", "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "mlp.layers.0.weight": "linear.weight", "attn.logit_scale": "attention.logit_scale",
    "attn.cpb_mlp.0.weight": "attention.position_bias.mlp.0.weight", "attn.cpb_mlp.0.bias": "attention.position_bias.mlp.0.bias",
    "attn.cpb_mlp.2.weight": "attention.position_bias.mlp.2.weight",
}
SOWA_TEXT_KEYS = {"cross_fusion.linear.weight": "text_linear.weight", "cross_fusion.linear.bias": "text_linear.bias"}
SOWA_CLIP_PREFIX = "clip_model."
#: The CLIP text parts that SOWA's ``TextMapEncoder`` holds (as ``text_encoder.<part>``).
SOWA_TEXT_ENCODER_PARTS = ("transformer.", "positional_embedding", "ln_final.", "text_projection")
#: Keys of SOWA's checkpoint that hold frozen CLIP tensors under other names or configuration-derived buffers.
SOWA_FROZEN_OR_DERIVED = re.compile(
    r"^(visual_encoder\.clip_model\.|text_encoder\.|prompt_learner\.clip_model\.)"
    r"|^visual_encoder\.proj$"
    r"|^visual_encoder\.adapters\.\d+\.blocks\.\d+\.(attn\.(qkv|proj\.weight|proj\.bias|relative_coords_table|relative_position_index)|attn_mask)$"
    r"|^prompt_learner\.(tokenized_prompts|token_prefix|token_suffix)_(pos|neg)$"
)


@dataclass(frozen=True)
class OfficialCheckpoint:
    """A released checkpoint: the method it belongs to, the auxiliary dataset it was trained on (so
    it is evaluated on the other ones), its file name, where it is published, and its SHA-256 where
    the authors published one (none did: it is computed and printed when the file is used instead)."""

    method: str
    trained_on: str
    filename: str
    source: str
    url: str = ""
    sha256: str = ""


_APRIL_GAN_REPO = "https://github.com/ByChelsea/VAND-APRIL-GAN"
#: name -> released checkpoint. AGPNet's authors released no code and no weights.
REGISTRY: dict[str, OfficialCheckpoint] = {
    "april_gan/mvtec": OfficialCheckpoint("april_gan", "mvtec", "mvtec_pretrained.pth", f"{_APRIL_GAN_REPO} exps/pretrained/",
                                          f"{_APRIL_GAN_REPO}/raw/HEAD/exps/pretrained/mvtec_pretrained.pth"),
    "april_gan/visa": OfficialCheckpoint("april_gan", "visa", "visa_pretrained.pth", f"{_APRIL_GAN_REPO} exps/pretrained/",
                                         f"{_APRIL_GAN_REPO}/raw/HEAD/exps/pretrained/visa_pretrained.pth"),
    # The Hub repository's file names could not be read from here: download the checkpoint trained
    # on each dataset (Lightning `epoch_000.ckpt`) and save it under the file name given.
    "sowa/mvtec": OfficialCheckpoint("sowa", "mvtec", "sowa_trained_on_mvtec.ckpt", "Hugging Face Hub zongxiang/sowa (or Baidu Pan, code 5jir)"),
    "sowa/visa": OfficialCheckpoint("sowa", "visa", "sowa_trained_on_visa.ckpt", "Hugging Face Hub zongxiang/sowa (or Baidu Pan, code 5jir)"),
}


def official_dir() -> Path:
    """Where released checkpoints are looked for: ``$WEIGHTS_DIR/official`` or ``~/.cache/sowa_lib/official``."""
    return weights_cache("official") or Path("~/.cache/sowa_lib/official").expanduser()


def official_name(method: str, trained_on: str) -> str:
    """The registry name of ``method``'s checkpoint trained on ``trained_on`` (e.g. ``"april_gan/visa"``)."""
    name = f"{method}/{trained_on}"
    if name not in REGISTRY:
        raise KeyError(f"no released {method} checkpoint trained on {trained_on!r}; known: {sorted(REGISTRY)}")
    return name


#: ``checkpoint="smoke:<name>"``: the smoke profile's stand-in for a released file (a declared
#: difference, ``profiles.SMOKE_DIFFERENCES``): random weights of the real architecture written in the
#: official format under ``SMOKE_DIR`` on first use, so the smoke reads the authors' format end to end.
SMOKE_PREFIX = "smoke:"
SMOKE_DIR = REPO_DATA / "smoke" / "official"


def smoke_checkpoint(name: str, method: Any) -> Path:
    """The smoke stand-in of released checkpoint ``name``, written once in the official format from the
    initial weights of ``method``: the method loading it, which the smoke's ``official_weights``
    ablation builds with the smoke profile's options (random weights of the real architecture)."""
    entry = REGISTRY[name]
    if entry.method != method.name:
        raise ValueError(f"{name} is a {entry.method} checkpoint; {method.name} cannot load it")
    path = SMOKE_DIR / entry.filename
    if not path.is_file():
        save_official(method, path)
    return path


def resolve(checkpoint: str | Path) -> Path:
    """A local file for ``checkpoint``: an existing path, or a :data:`REGISTRY` name found in
    :func:`official_dir` (downloaded there first when it has a URL and downloads are on). Raises
    :class:`WeightsNotFoundError` naming the file, where it is published and where to put it."""
    if Path(checkpoint).is_file():
        return Path(checkpoint)
    entry = REGISTRY.get(str(checkpoint))
    if entry is None:
        raise WeightsNotFoundError(f"checkpoint {checkpoint!r} is neither a file nor a released checkpoint ({sorted(REGISTRY)})")
    target = official_dir() / entry.filename
    if target.is_file():
        return target
    fix = (f"Get {entry.filename} from {entry.source} and put it at {target} (or set WEIGHTS_DIR so that "
           f"$WEIGHTS_DIR/official/{entry.filename} is it), or pass its path as checkpoint=.")
    if not entry.url or downloads_disabled():
        reason = "downloads are off (HF_HUB_OFFLINE)" if entry.url else "it has no direct download URL"
        raise WeightsNotFoundError(f"released checkpoint {checkpoint}: {target} is missing and {reason}. {fix}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(entry.url, str(target), progress=True)
    except Exception as error:  # urllib errors differ by version; all mean "not available here"
        raise WeightsNotFoundError(f"released checkpoint {checkpoint} could not be downloaded ({error}). {fix}") from error
    return target


def check_sha256(path: Path, expected: str = "") -> str:
    """The file's SHA-256; compared with ``expected`` when one was published, else printed each time
    the file is used (no checksum is published for these files, so a user can record it)."""
    value = file_hashes(path)["sha256"]
    if expected and value != expected:
        raise ValueError(f"{path}: SHA-256 {value} differs from the published {expected}; the file is not the released one")
    if not expected:
        print(f"official weights {path.name}: sha256 {value} (computed here; no checksum is published)")
    return value


# ---------------------------------------------------------------------- April-GAN
def april_gan_from_official(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``{'trainable_linearlayer': {fc.<i>.*}}`` -> our ``heads.<i>.*``."""
    heads = state[APRIL_GAN_KEY]
    bad = [k for k in heads if not re.fullmatch(r"fc\.\d+\.(weight|bias)", k)]
    if bad:
        raise KeyError(f"April-GAN checkpoint: unexpected keys in {APRIL_GAN_KEY!r}: {bad[:5]}")
    return {"heads." + key[len("fc."):]: value for key, value in heads.items()}


def april_gan_to_official(trainable: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Our ``heads.<i>.*`` -> ``{'trainable_linearlayer': {fc.<i>.*}}`` (what the official ``test.py`` loads)."""
    return {APRIL_GAN_KEY: {"fc." + key[len("heads."):]: value.detach().clone() for key, value in trainable.items()}}


# ---------------------------------------------------------------------- SOWA
def _sowa_pairs(method: Any) -> dict[str, str]:
    """Official key (within ``net.``) -> our trainable key, for ``method``'s layers and blocks."""
    check_sowa_official_shape(method)
    pairs = dict(SOWA_TEXT_KEYS)
    for layer, adapter in enumerate(method.adapters):
        for block in range(len(adapter.blocks)):
            for official, ours in SOWA_ADAPTER_KEYS.items():
                pairs[f"visual_encoder.adapters.{layer}.blocks.{block}.{official}"] = f"adapters.{layer}.blocks.{block}.{ours}"
    return pairs


def check_sowa_official_shape(method: Any) -> None:
    """The official format holds the reference configuration only: HFWA adapters (one per layer)
    with Swin-V2's continuous position bias and a learned logit scale, and the text Linear."""
    blocks = [block for adapter in method.adapters if isinstance(adapter, HFWAAdapter) for block in adapter.blocks]
    problems = []
    if len(blocks) != sum(len(getattr(a, "blocks", [None])) for a in method.adapters):
        problems.append("adapter='linear'")
    if any(not isinstance(b.attention.position_bias, ContinuousPositionBias) for b in blocks):
        problems.append("position_bias other than 'continuous'")
    if any(not isinstance(b.attention.logit_scale, nn.Parameter) for b in blocks):
        problems.append("logit_scale='fixed'")
    if len({id(b.linear) for b in blocks}) != len(blocks):
        problems.append("share_adapters=True")
    if not isinstance(method.text_linear, nn.Linear):
        problems.append("text_linear=False")
    if problems:
        raise ValueError(f"SOWA's official checkpoint format holds the reference configuration only; this model has {', '.join(problems)}")


def sowa_from_official(method: Any, checkpoint: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A Lightning checkpoint -> (our trainable state, the frozen CLIP's state in open_clip names).

    Strict: raises on a missing trainable key or an unknown key of the file."""
    state = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint
    net = {k[len(LIGHTNING_PREFIX):]: v for k, v in state.items() if k.startswith(LIGHTNING_PREFIX)}
    if len(net) != len(state):
        raise KeyError(f"SOWA checkpoint: keys outside {LIGHTNING_PREFIX!r}: {sorted(set(state) - {LIGHTNING_PREFIX + k for k in net})[:5]}")
    pairs = _sowa_pairs(method)
    missing = sorted(set(pairs) - set(net) - {"prompt_learner.ctx_pos", "prompt_learner.ctx_neg"})
    missing += [k for k in ("prompt_learner.ctx_pos", "prompt_learner.ctx_neg") if k not in net]
    known = set(pairs) | {"prompt_learner.ctx_pos", "prompt_learner.ctx_neg"}
    unexpected = sorted(k for k in net if k not in known and not k.startswith(SOWA_CLIP_PREFIX) and not SOWA_FROZEN_OR_DERIVED.search(k))
    if missing or unexpected:
        raise KeyError(f"SOWA checkpoint does not match this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    trainable = {ours: net[official] for official, ours in pairs.items()}
    trainable["prompts.context"] = torch.cat([net["prompt_learner.ctx_pos"].flatten(0, 1), net["prompt_learner.ctx_neg"].flatten(0, 1)])
    clip = {k[len(SOWA_CLIP_PREFIX):]: v for k, v in net.items() if k.startswith(SOWA_CLIP_PREFIX)}
    return trainable, clip


def _sowa_prompt_buffers(method: Any) -> dict[str, torch.Tensor]:
    """The prompt learner's buffers (spec sowa §1.4): token ids ``[1, 1, 77]`` and the frozen SOT
    prefix / suffix embeddings ``[1, 1, n, text_width]`` of the normal (pos) and abnormal (neg) sentence."""
    prompts = method.prompts
    length = prompts.context.shape[1]
    with torch.no_grad():
        embedded = method.clip.token_embedding(prompts.token_ids)
    buffers = {}
    for row, state in enumerate(("pos", "neg")):
        buffers[f"prompt_learner.tokenized_prompts_{state}"] = prompts.token_ids[row].view(1, 1, -1).to(torch.int32).clone()
        buffers[f"prompt_learner.token_prefix_{state}"] = embedded[row, :1].view(1, 1, 1, -1).clone()
        buffers[f"prompt_learner.token_suffix_{state}"] = embedded[row, 1 + length:][None, None].clone()
    return buffers


def sowa_to_official(method: Any) -> dict[str, Any]:
    """Our SOWA -> a Lightning-style ``{'state_dict': {'net.*'}}`` that SOWA's ``eval.py`` loads:
    the mapped trainable tensors, the frozen CLIP under ``clip_model.``, and the adapters' derived
    buffers, so that the official ``AnomalyCLIPModule`` finds every key it has."""
    trainable = method.trainable_state_dict()
    net = {official: trainable[ours] for official, ours in _sowa_pairs(method).items()}
    context = trainable["prompts.context"]
    net["prompt_learner.ctx_pos"], net["prompt_learner.ctx_neg"] = context[:1, None].clone(), context[1:2, None].clone()
    clip = {k: v.detach().clone() for k, v in method.clip.model.state_dict().items()}
    for prefix in (SOWA_CLIP_PREFIX, "visual_encoder.clip_model.", "prompt_learner.clip_model."):
        net.update({prefix + k: v for k, v in clip.items()})
    net.update({"text_encoder." + k: v for k, v in clip.items() if k.startswith(SOWA_TEXT_ENCODER_PARTS)})
    net["visual_encoder.proj"] = clip["visual.proj"]
    net.update(_sowa_prompt_buffers(method))
    for layer, adapter in enumerate(method.adapters):
        for j, block in enumerate(adapter.blocks):
            prefix = f"visual_encoder.adapters.{layer}.blocks.{j}."
            net[prefix + "attn.relative_coords_table"] = block.attention.position_bias.coords_table.view(
                1, 2 * block.window - 1, 2 * block.window - 1, 2).clone()
            net[prefix + "attn.relative_position_index"] = block.attention.position_bias.index.clone()
            net[prefix + "attn.qkv"] = block.attention.frozen_attn.in_proj_weight.detach().clone()
            net[prefix + "attn.proj.weight"] = block.attention.frozen_attn.out_proj.weight.detach().clone()
            net[prefix + "attn.proj.bias"] = block.attention.frozen_attn.out_proj.bias.detach().clone()
            if block.mask is not None:
                net[prefix + "attn_mask"] = block.mask.clone()
    return {"state_dict": {LIGHTNING_PREFIX + k: v for k, v in net.items()}, "epoch": 0, "global_step": 0}


# ---------------------------------------------------------------------- either method, any format
def load_trained_weights(method: Any, checkpoint: str | Path, *, load_clip: bool = True) -> str:
    """Load the trained weights in ``checkpoint`` (a path, a :data:`REGISTRY` name, or
    ``"smoke:<name>"``: :func:`smoke_checkpoint`) into ``method`` (April-GAN or SOWA), whichever
    format it is in: the official one, or ours (``trainable_state_dict`` keys). SOWA's official file
    also carries the frozen CLIP; ``load_clip`` loads it into the backbone (strict; the backbone's
    ``weights_id`` stays the one it was built with, the run's configuration names the file).
    Returns the format read: ``"official"`` or ``"ours"``."""
    if str(checkpoint).startswith(SMOKE_PREFIX):
        path = smoke_checkpoint(str(checkpoint)[len(SMOKE_PREFIX):], method)
    else:
        path = resolve(checkpoint)
    entry = REGISTRY.get(str(checkpoint))
    if entry is not None:
        check_sha256(path, entry.sha256)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if method.name == "april_gan" and APRIL_GAN_KEY in state:
        method.load_trainable_state_dict(april_gan_from_official(state))
        return "official"
    if method.name == "sowa" and any(k.startswith(LIGHTNING_PREFIX) for k in state.get("state_dict", state)):
        trainable, clip = sowa_from_official(method, state)
        if load_clip and clip:
            method.clip.model.load_state_dict(clip, strict=True)
            # resizes start from the loaded grid (SOWA runs at CLIP's native 336 px)
            method.clip.native_position_embedding.copy_(method.clip.visual.positional_embedding.detach())
        method.load_trainable_state_dict(trainable)
        return "official"
    method.load_trainable_state_dict(state)
    return "ours"


def save_official(method: Any, path: str | Path) -> Path:
    """Write ``method``'s learned weights in its authors' format (April-GAN heads ``.pth``, SOWA
    Lightning ``.ckpt``), so that a result here can be checked with their own evaluation scripts."""
    if method.name == "april_gan":
        payload = april_gan_to_official(method.trainable_state_dict())
    elif method.name == "sowa":
        payload = sowa_to_official(method)
    else:
        raise ValueError(f"{method.name} has no official checkpoint format (only april_gan and sowa released weights)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)
    return path
