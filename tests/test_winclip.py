"""WinCLIP/WinCLIP+: anomalib's golden cases (spec april_gan_winclip_peers §2.4) and end-to-end runs
on the tiny CLIP and the generated demo benchmark."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from sowa_lib.backbones.clip import load_clip
from sowa_lib.data import demo, load
from sowa_lib.data.transforms import load_images
from sowa_lib.methods import build
from sowa_lib.methods.winclip import WinCLIP, harmonic_aggregation, harmonic_mean, make_masks
from sowa_lib.ops import MemoryBank
from sowa_lib.prompts import WINCLIP, class_text_features

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


def test_defaults_are_anomalibs():
    defaults = {k: p.default for k, p in inspect.signature(WinCLIP.__init__).parameters.items() if k != "self"}
    assert defaults == {
        "backbone": "ViT-B-16-plus-240",
        "pretrained": "laion400m_e31",
        "backbone_checkpoint": None,
        "image_size": 240,
        "scales": (2, 3),
        "temperature": 0.07,
        "use_class_name": True,
        "templates": "anomalib",
        "abnormal_states": "anomalib",
        "text_averaging": "mean",
        "patch_layer": "last",
        "zero_shot_mean": "harmonic",
        "few_shot_mean": "arithmetic",
        "fusion": "arithmetic",
        "upsample_align_corners": False,
        "smoothing_sigma": 0.0,
    }


def test_without_class_name_prompts_say_object():
    clip = load_clip("tiny-clip-b16", image_size=64, quick_gelu=False, seed=0)
    method = build("winclip", backbone=clip, image_size=64, use_class_name=False)
    assert torch.equal(method.text_features("bottle"), class_text_features(clip.encode_text, WINCLIP, "object"))


# ---------------------------------------------------------------------------- hand-composed reference
# WinCLIP(+) written out from spec §2.2 with open_clip's own modules and plain loops, sharing no code
# with sowa_lib.methods.winclip: windows listed by hand, per-patch loops for the harmonic aggregation.
TAU = 0.07


def windows_by_hand(grid: int, kernel: int) -> list[list[int]]:
    """Patch indices of every kernel×kernel window, stride 1, windows row-major."""
    return [
        [(row + i) * grid + (col + j) for i in range(kernel) for j in range(kernel)]
        for row in range(grid - kernel + 1)
        for col in range(grid - kernel + 1)
    ]


def abnormal_probability(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """softmax over (normal, abnormal) of cos(f, text)/τ, abnormal entry; features [..., D]."""
    cos = torch.stack([F.cosine_similarity(features, t.expand_as(features), dim=-1) for t in text], dim=-1)
    return (cos / TAU).softmax(dim=-1)[..., 1]


def harmonic_by_hand(window_scores: torch.Tensor, windows: list[list[int]], n_patches: int) -> torch.Tensor:
    """[B, n_windows] -> [B, n_patches]: covering count / Σ 1/score over the covering windows."""
    out = torch.zeros(window_scores.shape[0], n_patches)
    for patch in range(n_patches):
        covering = [w for w, members in enumerate(windows) if patch in members]
        out[:, patch] = len(covering) / (1 / window_scores[:, covering]).sum(dim=1)
    return out


def association_by_hand(queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """[B, Q, D] against all memory rows [M, D]: ½ · min (1 − cos)."""
    cos = F.normalize(queries, dim=-1) @ F.normalize(memory, dim=-1).T
    return 0.5 * (1 - cos).min(dim=-1).values


def encode_by_hand(visual, images: torch.Tensor, windows: dict[int, list[list[int]]]):
    """Image embedding (CLS -> ln_post -> proj), patch embeddings (last block -> ln_post, no proj) and
    each scale's window embeddings ([CLS + window tokens] with their position embeddings, before
    ln_pre, through ln_pre, all blocks, ln_post; CLS -> proj)."""
    assert visual.transformer.batch_first  # open_clip 3.x

    def run(tokens):
        return visual.ln_post(visual.transformer(visual.ln_pre(tokens)))

    captured = {}
    hook = visual.patch_dropout.register_forward_hook(lambda module, inputs, output: captured.update(tokens=inputs[0]))
    image_embedding = visual(images)
    hook.remove()
    tokens = captured["tokens"]
    patches = run(tokens)[:, 1:]
    window_embeddings = {
        scale: torch.stack([run(tokens[:, [0, *(1 + p for p in members)]])[:, 0] @ visual.proj for members in members_list], 1)
        for scale, members_list in windows.items()
    }
    return image_embedding, patches, window_embeddings


@torch.no_grad()
def winclip_by_hand(clip, images, references, category):
    grid, size = clip.grid_size, images.shape[-1]
    windows = {scale: windows_by_hand(grid, scale) for scale in (2, 3)}
    sentences = [WINCLIP.sentences(category, abnormal) for abnormal in (False, True)]
    text = torch.stack([clip.model.encode_text(clip.tokenize(group)).mean(dim=0) for group in sentences])
    image_embedding, patches, window_embeddings = encode_by_hand(clip.model.visual, images, windows)
    s0 = abnormal_probability(image_embedding, text)
    scale_maps = [harmonic_by_hand(abnormal_probability(window_embeddings[k], text), windows[k], grid * grid) for k in (2, 3)]
    zero_shot = 3 / (1 / s0[:, None] + 1 / scale_maps[0] + 1 / scale_maps[1])
    _, reference_patches, reference_windows = encode_by_hand(clip.model.visual, references, windows)
    few_shot_maps = [association_by_hand(patches, reference_patches.flatten(0, 1))]
    for k in (2, 3):
        distances = association_by_hand(window_embeddings[k], reference_windows[k].flatten(0, 1))
        few_shot_maps.append(harmonic_by_hand(distances, windows[k], grid * grid))
    few_shot = (few_shot_maps[0] + few_shot_maps[1] + few_shot_maps[2]) / 3

    def upsample(patch_map):
        return F.interpolate(patch_map.reshape(-1, 1, grid, grid), size=(size, size), mode="bilinear").squeeze(1)

    return {
        "zero_scores": s0,
        "zero_maps": upsample(zero_shot),
        "few_scores": (s0 + few_shot.amax(dim=1)) / 2,
        "few_maps": upsample((zero_shot + few_shot) / 2),
    }


def test_zero_and_few_shot_equal_a_hand_composed_reference():
    """Default composition, end to end on the tiny CLIP, against the plain computation above."""
    clip = load_clip("tiny-clip-b16", image_size=64, quick_gelu=False, seed=0)
    method = build("winclip", backbone=clip, image_size=64)  # defaults otherwise
    generator = torch.Generator().manual_seed(1)
    images, references = torch.randn(2, 3, 64, 64, generator=generator), torch.randn(2, 3, 64, 64, generator=generator)
    expected = winclip_by_hand(clip, images, references, "bottle")
    method.set_references(torch.empty(0, 3, 64, 64), "bottle")
    zero = method.finalize_category(method.predict(images, "bottle"))
    assert torch.allclose(zero.scores, expected["zero_scores"], atol=1e-6)
    assert torch.allclose(zero.maps, expected["zero_maps"], atol=1e-5)
    method.set_references(references, "bottle")
    few = method.finalize_category(method.predict(images, "bottle"))
    assert torch.allclose(few.scores, expected["few_scores"], atol=1e-6)
    assert torch.allclose(few.maps, expected["few_maps"], atol=1e-5)


# ---------------------------------------------------------------------------- fidelity switches
# Each anomalib choice against its alternative, composed by hand from the pieces above.


def text_by_hand(clip, category: str, abnormal_states: tuple[str, ...], templates: tuple[str, ...], normalise: bool) -> torch.Tensor:
    """[2, D]: sentences written out (states outer, templates inner), raw mean or normalise-mean-normalise."""
    groups = [[t.format(s.format(category)) for s in states for t in templates] for states in (WINCLIP.normal_states, abnormal_states)]
    rows = []
    for group in groups:
        features = clip.model.encode_text(clip.tokenize(group))
        rows.append(F.normalize(F.normalize(features, dim=-1).mean(0), dim=0) if normalise else features.mean(0))
    return torch.stack(rows)


def test_prompt_switches_give_the_papers_states_deduplicated_templates_and_normalised_average():
    clip = load_clip("tiny-clip-b16", image_size=64, quick_gelu=False, seed=0)
    method = build("winclip", backbone=clip, image_size=64, templates="deduplicated", abnormal_states="with_broken",
                   text_averaging="normalize_mean_normalize")
    templates = list(WINCLIP.templates)
    templates[8] = "a jpeg corrupted photo of a {}."  # the second of anomalib's two "of the" copies
    states = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
    assert len(set(method.ensemble.templates)) == 21 and method.ensemble.abnormal_states == states
    with torch.no_grad():
        expected = text_by_hand(clip, "bottle", states, tuple(templates), normalise=True)
        assert torch.allclose(method.text_features("bottle"), expected, atol=1e-6)
        default = build("winclip", backbone=clip, image_size=64).text_features("bottle")
        assert torch.allclose(default, text_by_hand(clip, "bottle", WINCLIP.abnormal_states, WINCLIP.templates, normalise=False), atol=1e-6)
    with pytest.raises(ValueError, match="text_averaging"):
        build("winclip", backbone=clip, image_size=64, text_averaging="median")


@torch.no_grad()
def test_mean_fusion_and_output_switches_equal_a_hand_composition():
    """Arithmetic zero-shot mean, harmonic few-shot mean, harmonic fusion, align_corners and σ = 1."""
    clip = load_clip("tiny-clip-b16", image_size=64, quick_gelu=False, seed=0)
    method = build("winclip", backbone=clip, image_size=64, zero_shot_mean="arithmetic", few_shot_mean="harmonic", fusion="harmonic",
                   upsample_align_corners=True, smoothing_sigma=1.0)
    generator = torch.Generator().manual_seed(2)
    images, references = torch.randn(2, 3, 64, 64, generator=generator), torch.randn(1, 3, 64, 64, generator=generator)
    grid = clip.grid_size
    windows = {scale: windows_by_hand(grid, scale) for scale in (2, 3)}
    text = text_by_hand(clip, "bottle", WINCLIP.abnormal_states, WINCLIP.templates, normalise=False)
    image_embedding, patches, window_embeddings = encode_by_hand(clip.model.visual, images, windows)
    s0 = abnormal_probability(image_embedding, text)
    scale_maps = [harmonic_by_hand(abnormal_probability(window_embeddings[k], text), windows[k], grid * grid) for k in (2, 3)]
    zero_shot = (s0[:, None] + scale_maps[0] + scale_maps[1]) / 3
    _, reference_patches, reference_windows = encode_by_hand(clip.model.visual, references, windows)
    few = [association_by_hand(patches, reference_patches.flatten(0, 1))]
    few += [harmonic_by_hand(association_by_hand(window_embeddings[k], reference_windows[k].flatten(0, 1)), windows[k], grid * grid) for k in (2, 3)]
    few_shot = 3 / (1 / few[0] + 1 / few[1] + 1 / few[2])
    fused = 2 / (1 / zero_shot + 1 / few_shot)
    scores = 2 / (1 / s0 + 1 / few_shot.amax(dim=1))
    upsampled = F.interpolate(fused.reshape(-1, 1, grid, grid), size=(64, 64), mode="bilinear", align_corners=True)[:, 0]
    smoothed = torch.from_numpy(np.stack([gaussian_filter(m.double().numpy(), sigma=1.0, mode="reflect") for m in upsampled])).float()
    method.set_references(references, "bottle")
    pred = method.predict(images, "bottle")
    assert torch.allclose(pred.scores, scores, atol=1e-6)
    assert torch.allclose(pred.maps, smoothed, atol=1e-5)


@torch.no_grad()
def test_patch_layer_penultimate_takes_the_block_before_the_last_through_ln_post():
    clip = load_clip("tiny-clip-b16", image_size=64, quick_gelu=False, seed=0)
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    visual = clip.model.visual
    tokens = visual.ln_pre(clip.embed_patches(images))
    for block in visual.transformer.resblocks[:-1]:
        tokens = block(tokens)
    _, _, patches = build("winclip", backbone=clip, image_size=64, patch_layer="penultimate").encode(images)
    assert torch.allclose(patches, visual.ln_post(tokens[:, 1:]), atol=1e-6)
    _, _, last = build("winclip", backbone=clip, image_size=64).encode(images)
    assert not torch.allclose(patches, last, atol=1e-3)


def test_every_winclip_switch_is_an_ablation_and_builds():
    from sowa_lib.ablations import ablations

    switches = {option for a in ablations("demo") if a.method == "winclip" for option in a.overrides}
    defaults = inspect.signature(WinCLIP.__init__).parameters
    assert switches == set(defaults) - {"self", "backbone", "pretrained", "backbone_checkpoint", "image_size", "scales"}
    clip = load_clip("tiny-clip-b16", image_size=64, quick_gelu=False, seed=0)
    for ablation in (a for a in ablations("paper") if a.method == "winclip"):
        method = build("winclip", backbone=clip, image_size=64, **ablation.overrides)
        assert all(getattr(method, k, v) == v for k, v in ablation.overrides.items() if k not in ("templates", "abnormal_states", "text_averaging"))
