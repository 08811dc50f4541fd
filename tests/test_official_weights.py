"""The authors' checkpoint formats in and out (issue 17): files built from the official key layouts
(ByChelsea/VAND-APRIL-GAN ``train.py``; huzongxiang/sowa ``AnomalyCLIPModule``) with random values
load strictly into the tiny models and give the same maps as the same tensors loaded natively."""
from __future__ import annotations

import pytest
import torch

from sowa_lib.backbones.clip import load_clip
from sowa_lib.errors import WeightsNotFoundError
from sowa_lib.methods import build
from sowa_lib.methods import official_weights
from sowa_lib.methods.official_weights import REGISTRY, load_trained_weights, resolve, save_official

IMAGES = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))


def _random(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _same_predictions(a, b) -> None:
    pa, pb = a.eval().predict(IMAGES, "bottle"), b.eval().predict(IMAGES, "bottle")
    torch.testing.assert_close(pa.maps, pb.maps, rtol=0, atol=0)
    torch.testing.assert_close(pa.scores, pb.scores, rtol=0, atol=0)


# ------------------------------------------------------------------ April-GAN
def april_gan_official(width: int = 64, embed: int = 64, layers: int = 4) -> dict:
    """``torch.save({'trainable_linearlayer': LinearLayer(...).state_dict()})``: ``fc.<i>.weight/bias``."""
    heads = {}
    for i in range(layers):
        heads[f"fc.{i}.weight"] = _random(embed, width, seed=i)
        heads[f"fc.{i}.bias"] = _random(embed, seed=10 + i)
    return {"trainable_linearlayer": heads}


def test_april_gan_official_heads_load_strictly_and_equal_native(tmp_path):
    official = april_gan_official()
    path = tmp_path / "mvtec_pretrained.pth"
    torch.save(official, path)
    loaded = build("april_gan", profile="demo", checkpoint=str(path))
    native = build("april_gan", profile="demo")
    native.load_trainable_state_dict({k.replace("fc.", "heads.", 1): v for k, v in official["trainable_linearlayer"].items()})
    for i in range(4):
        assert torch.equal(loaded.heads[i].weight, official["trainable_linearlayer"][f"fc.{i}.weight"])
    _same_predictions(loaded, native)


def test_april_gan_official_file_with_a_missing_or_unknown_key_is_refused(tmp_path):
    missing = april_gan_official()
    del missing["trainable_linearlayer"]["fc.3.bias"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(KeyError, match="heads.3.bias"):
        build("april_gan", profile="demo", checkpoint=str(tmp_path / "missing.pth"))
    unknown = april_gan_official()
    unknown["trainable_linearlayer"]["proj.weight"] = torch.zeros(1)
    torch.save(unknown, tmp_path / "unknown.pth")
    with pytest.raises(KeyError, match="proj.weight"):
        build("april_gan", profile="demo", checkpoint=str(tmp_path / "unknown.pth"))


def test_april_gan_heads_written_in_the_official_format_round_trip(tmp_path):
    trained = build("april_gan", profile="demo", seed=5)
    path = save_official(trained, tmp_path / "ours.pth")
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"trainable_linearlayer"}
    assert set(payload["trainable_linearlayer"]) == set(april_gan_official()["trainable_linearlayer"])
    again = build("april_gan", profile="demo")
    assert load_trained_weights(again, path) == "official"
    _same_predictions(trained, again)


# ------------------------------------------------------------------ SOWA
def sowa_official(layers: int = 4, width: int = 64, text_width: int = 64, embed: int = 64, heads: int = 8,
                  length: int = 12, window: int = 4) -> tuple[dict, dict]:
    """A Lightning checkpoint in AnomalyCLIPModule's key layout (``net.`` + AnomalyCLIP's keys), random
    trainable values, and a frozen CLIP (a tiny one of another seed than the demo's); returns it and that CLIP's state."""
    clip = {k: v.clone() for k, v in load_clip("tiny-clip", None, image_size=112, quick_gelu=True, seed=7).model.state_dict().items()}
    net, seed = {}, 100
    for layer in range(layers):
        block = f"visual_encoder.adapters.{layer}.blocks.0."
        for key, shape in (("norm1.weight", (width,)), ("norm1.bias", (width,)), ("norm2.weight", (width,)), ("norm2.bias", (width,)),
                           ("mlp.layers.0.weight", (width, width)), ("attn.logit_scale", (heads, 1, 1)),
                           ("attn.cpb_mlp.0.weight", (64, 2)), ("attn.cpb_mlp.0.bias", (64,)), ("attn.cpb_mlp.2.weight", (heads, 64))):
            seed += 1
            net[block + key] = _random(*shape, seed=seed) * 0.1
        net[block + "attn.relative_coords_table"] = torch.zeros(1, 2 * window - 1, 2 * window - 1, 2)
        net[block + "attn.relative_position_index"] = torch.zeros(window * window, window * window, dtype=torch.long)
        net[block + "attn.qkv"] = clip[f"visual.transformer.resblocks.{layer}.attn.in_proj_weight"]
        net[block + "attn.proj.weight"] = clip[f"visual.transformer.resblocks.{layer}.attn.out_proj.weight"]
        net[block + "attn.proj.bias"] = clip[f"visual.transformer.resblocks.{layer}.attn.out_proj.bias"]
    net["prompt_learner.ctx_pos"] = _random(1, 1, length, text_width, seed=1) * 0.02
    net["prompt_learner.ctx_neg"] = _random(1, 1, length, text_width, seed=2) * 0.02
    for state in ("pos", "neg"):
        net[f"prompt_learner.tokenized_prompts_{state}"] = torch.zeros(1, 1, 77, dtype=torch.int32)
        net[f"prompt_learner.token_prefix_{state}"] = torch.zeros(1, 1, 1, text_width)
        net[f"prompt_learner.token_suffix_{state}"] = torch.zeros(1, 1, 77 - 1 - length, text_width)
    net["cross_fusion.linear.weight"] = _random(embed, embed, seed=3) * 0.1
    net["cross_fusion.linear.bias"] = _random(embed, seed=4) * 0.1
    for prefix in ("clip_model.", "visual_encoder.clip_model.", "prompt_learner.clip_model."):
        net.update({prefix + k: v for k, v in clip.items()})
    net.update({"text_encoder." + k: v for k, v in clip.items() if k.startswith(("transformer.", "positional_embedding", "ln_final.", "text_projection"))})
    net["visual_encoder.proj"] = clip["visual.proj"]
    return {"state_dict": {"net." + k: v for k, v in net.items()}, "epoch": 0, "global_step": 1}, clip


def _sowa_native(checkpoint: dict, clip: dict):
    """The same tensors put into our SOWA under our own names."""
    net = {k[len("net."):]: v for k, v in checkpoint["state_dict"].items()}
    native = build("sowa", profile="demo")
    native.clip.model.load_state_dict(clip)
    ours = {"prompts.context": torch.cat([net["prompt_learner.ctx_pos"][0], net["prompt_learner.ctx_neg"][0]]),
            "text_linear.weight": net["cross_fusion.linear.weight"], "text_linear.bias": net["cross_fusion.linear.bias"]}
    renames = {"norm1": "norm1", "norm2": "norm2", "mlp.layers.0": "linear", "attn.logit_scale": "attention.logit_scale",
               "attn.cpb_mlp": "attention.position_bias.mlp"}
    for key, value in net.items():
        if key.startswith("visual_encoder.adapters.") and not key.endswith(("relative_coords_table", "relative_position_index", "qkv", "proj.weight", "proj.bias")):
            rest = key[len("visual_encoder."):]
            for official, mine in renames.items():
                rest = rest.replace(f".{official}", f".{mine}")
            ours[rest] = value
    native.load_trainable_state_dict(ours)
    return native


def test_sowa_official_lightning_checkpoint_loads_strictly_and_equals_native(tmp_path):
    checkpoint, clip = sowa_official()
    torch.save(checkpoint, tmp_path / "epoch_000.ckpt")
    loaded = build("sowa", profile="demo", checkpoint=str(tmp_path / "epoch_000.ckpt"))
    assert torch.equal(loaded.clip.model.visual.conv1.weight, clip["visual.conv1.weight"])  # the file's CLIP, not the demo's
    _same_predictions(loaded, _sowa_native(checkpoint, clip))


@pytest.mark.parametrize("change", ["missing", "unknown"])
def test_sowa_official_checkpoint_with_a_missing_or_unknown_key_is_refused(tmp_path, change):
    checkpoint, _ = sowa_official()
    state = checkpoint["state_dict"]
    if change == "missing":
        del state["net.visual_encoder.adapters.2.blocks.0.mlp.layers.0.weight"]
    else:
        state["net.visual_encoder.adapters.2.blocks.0.extra.weight"] = torch.zeros(1)
    torch.save(checkpoint, tmp_path / "bad.ckpt")
    with pytest.raises(KeyError, match="adapters.2.blocks.0"):
        build("sowa", profile="demo", checkpoint=str(tmp_path / "bad.ckpt"))


def test_sowa_official_format_holds_the_reference_configuration_only(tmp_path):
    checkpoint, _ = sowa_official()
    torch.save(checkpoint, tmp_path / "epoch_000.ckpt")
    with pytest.raises(ValueError, match="position_bias"):
        build("sowa", profile="demo", position_bias="table", checkpoint=str(tmp_path / "epoch_000.ckpt"))


def test_sowa_written_in_the_official_format_has_every_official_key_and_round_trips(tmp_path):
    official, _ = sowa_official()
    trained = build("sowa", profile="demo", seed=9)
    path = save_official(trained, tmp_path / "ours.ckpt")
    written = torch.load(path, weights_only=True)["state_dict"]
    assert set(written) == set(official["state_dict"])
    for key, value in official["state_dict"].items():
        assert written[key].shape == value.shape, key
    again = build("sowa", profile="demo")
    assert load_trained_weights(again, path) == "official"
    _same_predictions(trained, again)


def test_our_own_checkpoint_format_still_loads(tmp_path):
    trained = build("sowa", profile="demo", seed=9)
    torch.save(trained.trainable_state_dict(), tmp_path / "ours.pt")
    again = build("sowa", profile="demo", checkpoint=str(tmp_path / "ours.pt"))
    _same_predictions(trained, again)


def test_a_missing_released_checkpoint_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, entry in REGISTRY.items():
        with pytest.raises(WeightsNotFoundError) as error:
            resolve(name)
        assert entry.filename in str(error.value) and str(tmp_path / "official") in str(error.value)


def test_a_smoke_stand_in_is_written_from_the_loading_methods_own_initial_weights(tmp_path, monkeypatch):
    """``checkpoint="smoke:<name>"`` (the smoke profile's stand-in for a released file): written once
    in the official format from the method that loads it, then read like the authors' file."""
    monkeypatch.setattr(official_weights, "SMOKE_DIR", tmp_path)
    fresh = build("april_gan", profile="demo")
    stand_in = build("april_gan", profile="demo", checkpoint="smoke:april_gan/visa")
    assert (tmp_path / REGISTRY["april_gan/visa"].filename).is_file()
    assert all(torch.equal(v, stand_in.trainable_state_dict()[k]) for k, v in fresh.trainable_state_dict().items())
    assert load_trained_weights(fresh, "smoke:april_gan/visa") == "official"
    with pytest.raises(ValueError, match="april_gan cannot load it"):
        load_trained_weights(fresh, "smoke:sowa/visa")
