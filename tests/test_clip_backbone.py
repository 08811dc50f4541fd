"""ClipBackbone on the tiny random CLIP: taps, CLS embedding, text paths, position resize, loading."""
from __future__ import annotations

import hashlib
import os
import time

import pytest
import torch
from open_clip.model import resize_pos_embed
from open_clip.transformer import QuickGELU

import sowa_lib.backbones.clip as clip_module
from sowa_lib.backbones.clip import load_clip, resize_position_embedding
from sowa_lib import features
from sowa_lib.errors import WeightsNotFoundError
from sowa_lib.methods import build

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny-clip", image_size=112, quick_gelu=False, seed=0)


def test_taps_are_block_outputs_batch_first_and_cls_matches_open_clip(clip):
    images = torch.randn(2, 3, 112, 112)
    hooked = {}
    handles = [b.register_forward_hook(lambda m, i, o, k=k: hooked.__setitem__(k, o)) for k, b in enumerate(clip.blocks)]
    embedding, taps = clip.encode_image(images, taps=[3, 1])
    for h in handles:
        h.remove()
    assert embedding.shape == (2, clip.embed_dim) and embedding.dtype == torch.float32
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert [t.shape for t in taps] == [(2, 1 + 8 * 8, clip.width)] * 2
    assert torch.equal(taps[0], hooked[3]) and torch.equal(taps[1], hooked[1])  # order as asked, 0-based
    reference = torch.nn.functional.normalize(clip.model.visual(images), dim=-1)
    assert torch.allclose(embedding, reference, atol=1e-6)


def test_embed_patches_then_encode_tokens_is_encode_image(clip):
    images = torch.randn(1, 3, 112, 112)
    tokens = clip.embed_patches(images)
    assert tokens.shape == (1, 65, clip.width)
    assert torch.equal(clip.encode_tokens(tokens)[0], clip.encode_image(images)[0])


def test_bad_taps_and_sizes_are_refused(clip):
    with pytest.raises(IndexError, match="0-based"):
        clip.encode_image(torch.randn(1, 3, 112, 112), taps=[4])
    with pytest.raises(ValueError, match="112px"):
        clip.encode_image(torch.randn(1, 3, 224, 224))


def test_text_paths_agree_with_open_clip(clip):
    texts = ["a photo of a metal_nut.", "damaged bottle", "a close-up photo of a bottle with a long scratch on its neck."]
    ids = clip.tokenize(texts)
    expected = clip.model.encode_text(ids)  # all 77 positions; encode_text cuts the padding after the longest
    assert torch.allclose(clip.encode_text(texts), expected, atol=1e-5)
    direct = clip.encode_prompt_embeddings(clip.token_embedding(ids), clip.eot_positions(ids))
    assert torch.allclose(direct, expected, atol=1e-5)
    assert torch.allclose(clip.encode_text(texts, normalize=True).norm(dim=-1), torch.ones(3), atol=1e-6)


def test_prompt_embeddings_carry_gradients_to_learnable_context(clip):
    ids = clip.tokenize(["X X X X object."])
    embeddings = clip.token_embedding(ids).detach()
    context = torch.zeros(4, clip.text_width, requires_grad=True)
    spliced = torch.cat([embeddings[:, :1], context[None], embeddings[:, 5:]], dim=1)
    out = clip.encode_prompt_embeddings(spliced, clip.eot_positions(ids))
    out.sum().backward()
    assert context.grad is not None and context.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in clip.parameters())


def test_position_resize_matches_open_clip_and_keeps_cls():
    torch.manual_seed(0)
    position = torch.randn(1 + 24 * 24, 16)
    resized = resize_position_embedding(position, 37)
    assert resized.shape == (1 + 37 * 37, 16) and torch.equal(resized[0], position[0])
    state = {"visual.positional_embedding": position}
    model = type("M", (), {"visual": type("V", (), {"grid_size": (37, 37)})()})()
    resize_pos_embed(state, model)  # open_clip's loader resize (bicubic, antialias, CLS kept)
    assert torch.allclose(resized, state["visual.positional_embedding"])
    assert resize_position_embedding(position, 24) is position


def test_set_image_size_always_starts_from_the_loaded_grid():
    clip = load_clip("tiny-clip", quick_gelu=False, seed=0)
    native = clip.visual.positional_embedding.clone()
    clip.set_image_size(224)
    assert clip.grid_size == 16 and clip.visual.positional_embedding.shape[0] == 257
    clip.set_image_size(112)
    assert torch.equal(clip.visual.positional_embedding, native)
    with pytest.raises(ValueError, match="multiple"):
        clip.set_image_size(100)


def test_seed_and_activation_are_explicit():
    a = load_clip("tiny-clip", quick_gelu=True, seed=1)
    b = load_clip("tiny-clip", quick_gelu=False, seed=1)
    c = load_clip("tiny-clip", quick_gelu=False, seed=2)
    assert isinstance(a.blocks[0].mlp.gelu, QuickGELU) and isinstance(b.blocks[0].mlp.gelu, torch.nn.GELU)
    assert torch.equal(a.visual.proj, b.visual.proj) and not torch.equal(b.visual.proj, c.visual.proj)
    assert b.patch_size == 14 and load_clip("tiny-clip-b16", quick_gelu=False).patch_size == 16
    assert b.width % 8 == 0


def test_local_state_dict_and_torchscript_archive_load(tmp_path):
    source = load_clip("tiny-clip", quick_gelu=True, seed=3)
    torch.save(source.model.state_dict(), tmp_path / "tiny.pt")
    traced = torch.jit.trace_module(source.model, {"encode_image": torch.randn(1, 3, 112, 112)}, check_trace=False)
    traced.save(str(tmp_path / "tiny_jit.pt"))  # the OpenAI releases are TorchScript archives
    images = torch.randn(1, 3, 112, 112)
    for path in ("tiny.pt", "tiny_jit.pt"):  # a TorchScript archive is rounded through fp16 by default (next test)
        loaded = load_clip("tiny-clip", checkpoint=str(tmp_path / path), quick_gelu=True, seed=4, round_fp16=False)
        assert torch.equal(loaded.encode_image(images)[0], source.encode_image(images)[0])
        digest = hashlib.sha256((tmp_path / path).read_bytes()).hexdigest()
        assert loaded.weights_id == f"tiny-clip:file:{digest[:12]}"


def test_a_repeated_build_is_an_independent_copy_with_the_built_fingerprint():
    """load_clip keeps what it built (clip.KEEP_BUILT) and hands out copies that share no tensor."""
    first, second = (load_clip("tiny-clip", image_size=112, quick_gelu=False, seed=7) for _ in range(2))
    pairs = list(zip(first.state_dict().values(), second.state_dict().values()))
    assert all(torch.equal(a, b) and a.data_ptr() != b.data_ptr() for a, b in pairs)
    built = features.fingerprint(first.visual)
    first.blocks[0].mlp.c_fc.bias.add_(1.0)  # as a method loading weights into its backbone would
    third = load_clip("tiny-clip", image_size=112, quick_gelu=False, seed=7)
    assert torch.equal(third.blocks[0].mlp.c_fc.bias, second.blocks[0].mlp.c_fc.bias)
    assert features.fingerprint(first.visual) != built == features.fingerprint(third.visual)
    clip_module._BUILT.clear()
    fresh = load_clip("tiny-clip", image_size=112, quick_gelu=False, seed=7)
    assert features.fingerprint(fresh.visual) == built  # the copied fingerprint is the one hashing gives
    assert features.fingerprint(load_clip("tiny-clip", image_size=112, quick_gelu=False, seed=8).visual) != built




def test_keeping_builds_can_be_switched_off(monkeypatch):
    """SOWA_KEEP_BUILT=0: nothing is kept and each call builds anew (the same weights: a seeded build)."""
    clip_module._BUILT.clear()
    monkeypatch.setenv(clip_module.KEEP_BUILT_ENV, "0")
    first, second = (load_clip("tiny-clip", image_size=112, quick_gelu=False, seed=5) for _ in range(2))
    assert not clip_module._BUILT
    assert torch.equal(first.visual.proj, second.visual.proj) and first.visual.proj.data_ptr() != second.visual.proj.data_ptr()
    monkeypatch.setenv(clip_module.KEEP_BUILT_ENV, "1")
    load_clip("tiny-clip", image_size=112, quick_gelu=False, seed=5)
    load_clip("tiny-clip", image_size=112, quick_gelu=False, seed=6)
    assert len(clip_module._BUILT) == 1
    monkeypatch.setenv(clip_module.KEEP_BUILT_ENV, "two")
    with pytest.raises(ValueError, match="SOWA_KEEP_BUILT='two'"):
        load_clip("tiny-clip", image_size=112, quick_gelu=False, seed=5)

def test_a_kept_build_is_copied_tensor_by_tensor_straight_to_the_device(monkeypatch):
    """No tensor of the kept build goes through a deep copy (on its way to a GPU that would be a
    second CPU copy): each is copied once, to the device, keeping its kind and requires_grad."""
    clip_module._BUILT.clear()
    load_clip("tiny-clip", image_size=112, quick_gelu=False, seed=9)
    (built,) = clip_module._BUILT.values()
    deep_copied = []
    deepcopy = torch.Tensor.__deepcopy__
    monkeypatch.setattr(torch.Tensor, "__deepcopy__", lambda self, memo: deep_copied.append(self.shape) or deepcopy(self, memo))
    copied = clip_module._independent_copy(built, "cpu")
    assert deep_copied == []
    for (name, a), b in zip(built.state_dict(keep_vars=True).items(), copied.state_dict(keep_vars=True).values()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
        assert type(a) is type(b) and a.requires_grad == b.requires_grad, name
    assert copied.tokenizer is built.tokenizer

def test_a_rewritten_weights_file_is_read_again(tmp_path):
    path = tmp_path / "tiny.pt"
    for seed in (3, 4):
        source = load_clip("tiny-clip", quick_gelu=True, seed=seed)
        torch.save(source.model.state_dict(), path)
        os.utime(path, ns=(seed, seed))  # a new modification time, as a new download or copy has
        loaded = load_clip("tiny-clip", checkpoint=str(path), quick_gelu=True, round_fp16=False)
        assert torch.equal(loaded.visual.proj, source.visual.proj)


def test_weights_id_names_the_tag_the_file_or_random(tmp_path):
    """The glossary's ``weights_id``, recorded by every run; ``pretrained`` is a tag, a file is ``checkpoint``."""
    assert load_clip("tiny-clip", None, quick_gelu=False).weights_id == "tiny-clip:random"
    assert build("winclip", profile="demo").weights_id == "tiny-clip-b16:random"
    with pytest.raises(WeightsNotFoundError, match="checkpoint="):
        load_clip("tiny-clip", str(tmp_path / "weights.pt"), quick_gelu=False)  # a path is not a tag
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_clip("ViT-L-14-336", "openai", checkpoint=str(tmp_path / "weights.pt"), quick_gelu=True)


def openai_loader_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What OpenAI's ``clip.load(jit=False)`` holds on CPU after loading ``state``: ``build_model`` makes
    the Conv/Linear weights and biases, attention in_proj and ``proj``/``text_projection`` fp16
    (``convert_weights``) and copies the file into them, then ``.float()``. Listed by key name here."""
    rounded = ("conv1.weight", "in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias", "c_fc.weight", "c_fc.bias",
               "c_proj.weight", "c_proj.bias", "visual.proj", "text_projection")
    return {k: v.half().float() if k.endswith(rounded) else v for k, v in state.items()}


def test_fp32_file_loads_as_the_official_openai_loader_rounds_it(tmp_path):
    source = load_clip("tiny-clip", quick_gelu=True, seed=5)
    state = source.model.state_dict()
    torch.save(state, tmp_path / "fp32.pt")
    expected = openai_loader_tensors(state)
    assert any(not torch.equal(expected[k], state[k]) for k in state)  # the rounding is visible on fp32 values
    for round_fp16, want in ((True, expected), (False, state)):
        loaded = load_clip("tiny-clip", checkpoint=str(tmp_path / "fp32.pt"), quick_gelu=True, round_fp16=round_fp16).model.state_dict()
        assert all(torch.equal(loaded[k], want[k]) for k in state), round_fp16
    # default: only OpenAI-format files (the "openai" tag, TorchScript archives) are rounded
    assert all(torch.equal(v, state[k]) for k, v in load_clip("tiny-clip", checkpoint=str(tmp_path / "fp32.pt"), quick_gelu=True).model.state_dict().items())
    sowa = build("sowa", backbone="tiny-clip", backbone_checkpoint=str(tmp_path / "fp32.pt"), image_size=112, taps=(0, 1, 2, 3), window=4)
    assert sowa.clip.model.state_dict()["text_projection"].equal(expected["text_projection"])


def test_uncached_weights_say_where_to_put_the_file(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(clip_module, "download_pretrained", offline)
    with pytest.raises(WeightsNotFoundError) as error:
        load_clip("ViT-L-14-336", "openai", quick_gelu=True, cache_dir=str(tmp_path))
    assert str(tmp_path / "ViT-L-14-336px.pt") in str(error.value) and "checkpoint=" in str(error.value)
    with pytest.raises(WeightsNotFoundError, match="known tags"):
        load_clip("ViT-B-16-plus-240", "no_such_tag", quick_gelu=False)


def test_offline_worker_raises_instead_of_downloading(tmp_path, monkeypatch):
    def download(*args, **kwargs):
        raise AssertionError("an offline worker must not download")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(clip_module, "download_pretrained", download)
    with pytest.raises(WeightsNotFoundError, match=r"ViT-L-14-336px\.pt is missing and downloads are off"):
        load_clip("ViT-L-14-336", "openai", quick_gelu=True, cache_dir=str(tmp_path))


@pytest.mark.parametrize("method", ["winclip", "april_gan"])
def test_demo_profile_on_the_tiny_clip_is_fast(method):
    """The tiny CLIP keeps the demo quick: a few hundred thousand vision weights, and far under a
    second per image (measured in milliseconds; the 5 s bound only guards against a heavy config)."""
    demo = build(method, profile="demo").eval()
    assert sum(p.numel() for p in demo.clip.visual.parameters()) < 1_000_000
    images = torch.randn(2, 3, demo.image_size, demo.image_size)
    demo.predict(images, "bottle")  # warm-up; encodes and caches the prompts
    start = time.perf_counter()
    demo.predict(images, "bottle")
    assert (time.perf_counter() - start) / len(images) < 5.0
