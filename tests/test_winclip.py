"""WinCLIP/WinCLIP+: anomalib's golden cases (spec april_gan_winclip_peers §2.4) and end-to-end runs
on the tiny CLIP and the generated demo benchmark."""
from __future__ import annotations

import pytest
import torch

from sowa_lib.backbones.clip import load_clip
from sowa_lib.data import demo, load
from sowa_lib.data.transforms import load_images
from sowa_lib.methods import build
from sowa_lib.methods.winclip import harmonic_aggregation, harmonic_mean, make_masks
from sowa_lib.ops import MemoryBank

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("grid", "kernel", "stride", "shape"),
    [((2, 2), 2, 1, (4, 1)), ((3, 3), 2, 1, (4, 4)), ((4, 4), 2, 1, (4, 9)), ((3, 3), 1, 1, (1, 9)), ((4, 4), 2, 2, (4, 4))],
)
def test_make_masks_shapes(grid, kernel, stride, shape):
    assert tuple(make_masks(grid, kernel, stride).shape) == shape


def test_make_masks_content_and_errors():
    assert make_masks((3, 3), 2).T.tolist() == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    with pytest.raises(ValueError):
        make_masks((2, 2), 3)


def test_harmonic_aggregation_golden():
    masks = torch.tensor([[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]])
    out = harmonic_aggregation(torch.tensor([[1.0, 0.75, 0.5, 0.25]]), (3, 3), masks)
    expected = torch.tensor([[1, 0.8571, 0.75], [0.6667, 0.48, 0.375], [0.5, 0.3333, 0.25]])
    assert torch.allclose(out[0], expected, atol=1e-4)


def test_harmonic_aggregation_zero_score_only_zeroes_covered_patches():
    masks = make_masks((3, 3), 2)
    out = harmonic_aggregation(torch.tensor([[0.0, 0.5, 0.5, 0.5]]), (3, 3), masks)
    assert out[0, 0, 0] == 0 and out[0, 0, 2] == 0.5 and out[0, 2, 2] == 0.5  # no NaN leaks
    assert torch.allclose(harmonic_mean([torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([0.25])]), torch.tensor([3 / 7]))


def test_association_score_golden():
    memory = MemoryBank(metric="cosine", scale=0.5)
    memory.set([torch.tensor([[[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]])])
    (scores,) = memory.distances([torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])])
    assert torch.allclose(scores, torch.tensor([[0.1464, 0.0]]), atol=1e-4)


@pytest.fixture(scope="module")
def winclip():
    clip = load_clip("tiny-clip-b16", image_size=64, quick_gelu=False, seed=0)
    return build("winclip", backbone=clip, image_size=64)


def test_window_embedding_is_cls_plus_window_tokens_alone(winclip):
    images = torch.randn(2, 3, 64, 64)
    tokens = winclip.clip.embed_patches(images)
    windows = winclip.window_embeddings(tokens, 3)
    assert windows.shape == (2, 4, winclip.clip.embed_dim)  # 4x4 grid -> 2x2 windows of 3x3
    # last window of the second image: patches rows 1-3, cols 1-3 (+1 for CLS)
    patches = [1 + r * 4 + c for r in (1, 2, 3) for c in (1, 2, 3)]
    alone, _ = winclip.clip.encode_tokens(tokens[1:2, [0, *patches]])
    assert torch.allclose(windows[1, 3], alone[0], atol=1e-5)


def test_zero_shot_map_is_harmonic_mean_of_scales(winclip):
    text = winclip.text_features("bottle")
    images = torch.randn(1, 3, 64, 64)
    image_embedding, windows, patches = winclip.encode(images)
    assert [w.shape[1] for w in windows] == [9, 4] and patches.shape == (1, 16, winclip.clip.width)
    s0 = torch.tensor([0.5])
    zero = winclip.zero_shot_map(s0, windows, text)
    assert zero.shape == (1, 4, 4) and torch.all(zero > 0) and torch.all(zero < 1)


@pytest.fixture(scope="module")
def demo_category(tmp_path_factory):
    root = demo.generate(tmp_path_factory.mktemp("demo"), image_size=64, n_train=3, n_test_good=2, n_test_bad=2)["demo_a"]
    samples = load("demo", root, split="test")
    category = samples[0].category
    return category, [s for s in samples if s.category == category], load("demo", root, category, "train")


def test_zero_and_few_shot_end_to_end_and_deterministic(winclip, demo_category):
    category, test, train = demo_category
    images = load_images(test, 64)
    winclip.set_references(torch.empty(0, 3, 64, 64), category)
    zero = winclip.predict(images, category)
    assert zero.scores.shape == (len(test),) and zero.maps.shape == (len(test), 64, 64)
    assert zero.maps.dtype == torch.float32 and torch.all((zero.maps >= 0) & (zero.maps <= 1))
    winclip.set_references(load_images(train[:2], 64), category)
    few = winclip.finalize_category(winclip.predict(images, category))
    assert torch.all(torch.isfinite(few.maps)) and not torch.allclose(few.maps, zero.maps)
    again = build("winclip", backbone=load_clip("tiny-clip-b16", image_size=64, quick_gelu=False, seed=0), image_size=64)
    again.set_references(load_images(train[:2], 64), category)
    assert torch.equal(again.predict(images, category).maps, few.maps)


def test_a_reference_queried_against_itself_scores_zero_few_shot(winclip, demo_category):
    category, _, train = demo_category
    reference = load_images(train[:1], 64)
    winclip.set_references(reference, category)
    _, windows, patches = winclip.encode(reference)
    assert winclip.few_shot_map(windows, patches).abs().max() < 1e-5
