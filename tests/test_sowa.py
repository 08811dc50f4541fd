"""SOWA (spec sowa): HFWA adapter pieces, learnable prompts, maps and scores, training, few-shot."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sowa_lib import data
from sowa_lib.backbones.clip import load_clip
from sowa_lib.data import demo
from sowa_lib.data.augment import group_by_defect
from sowa_lib.data.references import draw_references
from sowa_lib.data.transforms import load_images, load_masks, mask_to_tensor
from sowa_lib.methods import build
from sowa_lib.methods.base import Prediction, RunContext
from sowa_lib.methods.fewshot import MAP_MAX, TEXT_SCORE
from sowa_lib.methods.sowa import SOWA
from sowa_lib.methods.sowa_adapter import (
    ContinuousPositionBias,
    FrozenWindowAttention,
    HFWAAdapter,
    WindowOptions,
    relative_coords_table,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from sowa_lib.metrics import category_metrics
from sowa_lib.ops import minmax
from sowa_lib.training import TrainingBatch, epoch_rng, load_training_batch


def _frozen_attention(width: int = 16, heads: int = 4, seed: int = 0) -> nn.MultiheadAttention:
    torch.manual_seed(seed)
    attn = nn.MultiheadAttention(width, heads, batch_first=True)
    nn.init.normal_(attn.in_proj_bias)
    nn.init.normal_(attn.out_proj.bias)
    attn.requires_grad_(False)
    return attn


# ---------------------------------------------------------------- window partition / reverse


def test_window_partition_orders_windows_and_tokens_row_major() -> None:
    grid = torch.arange(16.0).view(1, 4, 4, 1)  # value = row * 4 + col
    windows = window_partition(grid, 2).squeeze(-1)
    assert windows.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


@pytest.mark.parametrize("window", [1, 2, 3, 6])
def test_window_partition_reverse_round_trip(window: int) -> None:
    x = torch.randn(2, 6, 6, 5)
    windows = window_partition(x, window)
    assert windows.shape == (2 * (6 // window) ** 2, window * window, 5)
    assert torch.equal(window_reverse(windows, window, 6, 6), x)


# ---------------------------------------------------------------- continuous position bias


def test_relative_coords_table_for_a_2x2_window_by_hand() -> None:
    c = math.log2(1 + 8) / math.log2(8)  # offset ±1 -> ±1/(2-1)*8 = ±8 -> log-spaced
    expected = [[-c, -c], [-c, 0], [-c, c], [0, -c], [0, 0], [0, c], [c, -c], [c, 0], [c, c]]
    assert torch.allclose(relative_coords_table(2), torch.tensor(expected))


def test_relative_position_index_for_a_2x2_window_by_hand() -> None:
    # tokens (0,0) (0,1) (1,0) (1,1); offset (dh, dw) = p_i - p_j sits at row (dh+1)*3 + (dw+1)
    expected = [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    assert relative_position_index(2).tolist() == expected


def test_continuous_position_bias_2x2_against_hand_computation() -> None:
    cpb = ContinuousPositionBias(window=2, num_heads=2, hidden=2)
    with torch.no_grad():
        cpb.mlp[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        cpb.mlp[0].bias.copy_(torch.tensor([0.0, -0.5]))
        cpb.mlp[2].weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))
    c = math.log2(9) / 3
    tokens = [(0, 0), (0, 1), (1, 0), (1, 1)]
    bias = cpb()
    assert bias.shape == (2, 4, 4)
    for i, (hi, wi) in enumerate(tokens):
        for j, (hj, wj) in enumerate(tokens):
            a, b = c * (hi - hj), c * (wi - wj)
            hidden = (max(a, 0.0), max(b - 0.5, 0.0))
            for head, (w0, w1) in enumerate([(1.0, -1.0), (0.5, 2.0)]):
                expected = 16.0 / (1.0 + math.exp(-(w0 * hidden[0] + w1 * hidden[1])))
                assert bias[head, i, j].item() == pytest.approx(expected, rel=1e-5)


def test_shifted_window_mask_separates_wrapped_regions() -> None:
    mask = shifted_window_mask(4, 4, 2, 1)
    assert mask.shape == (4, 4, 4)
    assert torch.all(mask[0] == 0)  # the top-left window holds one region only
    # last window after the roll holds tokens of 4 regions: only each token with itself is allowed
    assert torch.equal(mask[3] == 0, torch.eye(4, dtype=torch.bool))
    assert shifted_window_mask(4, 4, 2, 0) is None


# ---------------------------------------------------------------- frozen window attention


def _reference_window_attention(attn: nn.MultiheadAttention, x: torch.Tensor, heads: int, value_only: bool,
                                scale: float, bias: torch.Tensor, in_proj_bias: bool = False, out_proj: bool = True) -> torch.Tensor:
    """A literal per-head loop of spec §1.3 step 3 for one window ``[N, C]``."""
    c = x.shape[-1]
    d = c // heads
    w_q, w_k, w_v = attn.in_proj_weight.split(c)
    b_q, b_k, b_v = attn.in_proj_bias.split(c) if in_proj_bias else (0.0, 0.0, 0.0)
    q, k, v = x @ w_q.T + b_q, x @ w_k.T + b_k, x @ w_v.T + b_v
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        left, right = (v[:, sl], v[:, sl]) if value_only else (q[:, sl], k[:, sl])
        cos = torch.nn.functional.cosine_similarity(left[:, None, :], right[None, :, :], dim=-1)
        outs.append(torch.softmax(cos * scale + bias[h], dim=-1) @ v[:, sl])
    out = torch.cat(outs, dim=-1)
    return out @ attn.out_proj.weight.T + attn.out_proj.bias if out_proj else out


@pytest.mark.parametrize("value_only, in_proj_bias", [(True, False), (False, False), (True, True), (False, True)])
def test_frozen_window_attention_matches_per_head_loop(value_only: bool, in_proj_bias: bool) -> None:
    attn = _frozen_attention(width=16, heads=4)
    fwa = FrozenWindowAttention(attn, window=2, options=WindowOptions(num_heads=2, cpb_hidden=8, value_only=value_only,
                                                                       attn_drop=0.0, in_proj_bias=in_proj_bias))
    x = torch.randn(3, 4, 16)
    out = fwa(x)
    bias = fwa.position_bias()
    for w in range(3):
        expected = _reference_window_attention(attn, x[w], 2, value_only, 10.0, bias, in_proj_bias)
        assert torch.allclose(out[w], expected, atol=1e-5)


@pytest.mark.parametrize("switch, removed_params", [
    ({"logit_scale": "fixed"}, 2),  # the per-head scale: 2 heads
    ({"position_bias": "none"}, 2 * 8 + 8 + 8 * 2),  # the cpb MLP 2 -> 8 -> 2 heads
    ({"position_bias": "table"}, 2 * 8 + 8 + 8 * 2 - 3 * 3 * 2),  # replaced by a (2w-1)² x heads table
    ({"out_proj": False}, 0),  # out_proj is frozen: no trainable parameter changes
])
def test_window_attention_switches_by_per_head_loop(switch: dict, removed_params: int) -> None:
    """§5.4.4 switches: each variant equals the per-head loop with that piece changed."""
    attn = _frozen_attention(width=16, heads=4)
    base = dict(num_heads=2, cpb_hidden=8, attn_drop=0.0)
    default = FrozenWindowAttention(attn, window=2, options=WindowOptions(**base))
    fwa = FrozenWindowAttention(attn, window=2, options=WindowOptions(**base, **switch))
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(default) - count(fwa) == removed_params
    x = torch.randn(3, 4, 16)
    fixed_scale = switch.get("logit_scale") == "fixed"
    assert isinstance(fwa.logit_scale, nn.Parameter) != fixed_scale
    with torch.no_grad():
        if not fixed_scale:
            fwa.logit_scale.fill_(math.log(5.0))  # as if trained
        out = fwa(x)
    scale = 10.0 if fixed_scale else 5.0
    if switch.get("position_bias") == "none":
        bias = torch.zeros(2, 4, 4)
    elif switch.get("position_bias") == "table":
        table, index = fwa.position_bias.table, relative_position_index(2)
        bias = torch.stack([torch.stack([torch.stack([table[index[i, j], h] for j in range(4)]) for i in range(4)]) for h in range(2)])
    else:
        bias = fwa.position_bias()
    for w in range(3):
        expected = _reference_window_attention(attn, x[w], 2, True, scale, bias, out_proj=switch.get("out_proj", True))
        assert torch.allclose(out[w], expected, atol=1e-5)


def test_window_options_reject_unknown_choices() -> None:
    with pytest.raises(ValueError, match="position_bias"):
        WindowOptions(position_bias="swin")
    with pytest.raises(ValueError, match="logit_scale"):
        WindowOptions(logit_scale="frozen")


def test_logit_scale_init_ln10_and_clamped_at_ln100() -> None:
    fwa = FrozenWindowAttention(_frozen_attention(), window=2, options=WindowOptions(num_heads=2, attn_drop=0.0))
    assert torch.allclose(fwa.logit_scale, torch.full((2, 1, 1), math.log(10.0)))
    x = torch.randn(1, 4, 16)
    with torch.no_grad():
        fwa.logit_scale.fill_(math.log(100.0))
        at_cap = fwa(x)
        fwa.logit_scale.fill_(math.log(1000.0))
        assert torch.allclose(fwa(x), at_cap)


# ---------------------------------------------------------------- HFWA adapter


def test_hfwa_adapter_shapes_trainables_and_frozen_sharing() -> None:
    attn = _frozen_attention(width=16, heads=4)
    adapter = HFWAAdapter(attn, grid=4, window=2, depth=2, options=WindowOptions(num_heads=2, cpb_hidden=8))
    assert [b.shift for b in adapter.blocks] == [0, 1]
    tokens = torch.randn(3, 16, 16)
    assert adapter(tokens).shape == (3, 16, 16)
    trainable = {n for n, p in adapter.named_parameters() if p.requires_grad}
    assert not any("frozen_attn" in n for n in trainable)
    assert adapter.blocks[1].attention.frozen_attn is attn  # shared reference, not a copy
    per_block = 2 + (2 * 8 + 8) + 8 * 2 + 2 * 16 + 2 * 16 + 16 * 16
    assert sum(p.numel() for p in adapter.parameters() if p.requires_grad) == 2 * per_block


def test_hfwa_global_window_has_no_shift_and_post_norm_residual() -> None:
    attn = _frozen_attention(width=16, heads=4)
    adapter = HFWAAdapter(attn, grid=4, window=8, depth=2, options=WindowOptions(num_heads=2)).eval()
    assert [(b.window, b.shift) for b in adapter.blocks] == [(4, 0), (4, 0)]
    block = adapter.blocks[0]
    tokens = torch.randn(2, 16, 16)
    attended = block.attention(tokens)  # one global window = the whole grid in row-major order
    x1 = tokens + block.norm1(attended)
    assert torch.allclose(block(tokens), x1 + block.norm2(block.linear(x1)), atol=1e-6)
    block.linear_residual = False  # Fig. 2(b): no second residual (spec §5.4.4)
    assert torch.allclose(block(tokens), block.norm2(block.linear(x1)), atol=1e-6)


# ---------------------------------------------------------------- the SOWA method on a tiny CLIP

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 112  # the demo profile's size: 8x8 patch grid of the 14-px tiny CLIP


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sowa_demo")
    demo.generate(root, seed=0, image_size=64, n_train=4, n_test_good=2, n_test_bad=2)
    return root


def _tiny_sowa(**overrides) -> SOWA:
    """The demo SOWA; trained on the demo's ``demo_b`` (VisA's role): no mosaic (profiles.AUXILIARY_TRAINING)."""
    return build("sowa", profile="demo", **{"mosaic_rate": 0.0, **overrides}).eval()


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_default_paper_configuration_has_4822560_trainable_parameters() -> None:
    """Spec §1.9 on a ViT-L-14-336 of the real shape (meta tensors: shapes without memory)."""
    with torch.device("meta"):
        clip = load_clip("ViT-L-14-336", None, quick_gelu=True, device="meta")
        sowa = build("sowa", backbone=clip)
    assert (clip.grid_size, clip.width, clip.embed_dim, clip.text_width) == (24, 1024, 768, 768)
    trainable = dict((n, p.numel()) for n, p in sowa.named_parameters() if p.requires_grad)
    assert sum(trainable.values()) == 4_822_560
    assert sum(v for n, v in trainable.items() if n.startswith("adapters.")) == 4 * 1_053_384
    assert trainable["prompts.context"] == 2 * 12 * 768
    assert sum(v for n, v in trainable.items() if n.startswith("text_linear.")) == 590_592
    windows = [(b.window, b.shift, b.attention.num_heads) for a in sowa.adapters for b in a.blocks]
    assert windows == [(12, 0, 8)] * 4
    assert [a.blocks[0].attention.frozen_attn for a in sowa.adapters] == [clip.blocks[i].attn for i in (5, 11, 17, 23)]


@pytest.mark.parametrize("overrides, expected", [
    ({"share_adapters": True}, 1_053_384 + 18_432 + 590_592),  # one adapter's weights for all 4 layers (§5.4.3)
    ({"adapter": "linear", "text_linear": False}, 4 * 1024 * 1024 + 18_432),  # model/sowa_linear.yaml (§4.8)
    ({"logit_scale": "fixed"}, 4_822_560 - 4 * 8),
    ({"position_bias": "none"}, 4_822_560 - 4 * 704),
    ({"position_bias": "table"}, 4_822_560 - 4 * 704 + 4 * 23 * 23 * 8),
    ({"out_proj": False}, 4_822_560),
])
def test_switches_trainable_parameter_counts_at_paper_shape(overrides: dict, expected: int) -> None:
    with torch.device("meta"):
        clip = load_clip("ViT-L-14-336", None, quick_gelu=True, device="meta")
        sowa = build("sowa", backbone=clip, **overrides)
    assert sum(p.numel() for p in sowa.parameters() if p.requires_grad) == expected


def test_every_sowa_ablation_builds_in_both_profiles() -> None:
    """The ablation notebook's SOWA variants (spec §4.8, §6.6) are valid constructor overrides."""
    from sowa_lib.ablations import ablations

    for ablation in (a for a in ablations("demo") if a.method == "sowa"):
        _tiny_sowa(**ablation.overrides)
    with torch.device("meta"):
        clip = load_clip("ViT-L-14-336", None, quick_gelu=True, device="meta")
        # the official_weights variant reads a released file: tests/test_official_weights.py loads that format
        for ablation in (a for a in ablations("paper") if a.method == "sowa" and "checkpoint" not in a.overrides):
            build("sowa", backbone=clip, **ablation.overrides)


def test_shared_adapters_tie_learnable_parts_but_keep_each_layers_frozen_attention(demo_root: Path) -> None:
    sowa = _tiny_sowa(share_adapters=True)
    blocks = [a.blocks[0] for a in sowa.adapters]
    assert all(b.linear is blocks[0].linear and b.norm1 is blocks[0].norm1 and b.norm2 is blocks[0].norm2 for b in blocks)
    assert all(b.attention.logit_scale is blocks[0].attention.logit_scale for b in blocks)
    assert all(b.attention.position_bias is blocks[0].attention.position_bias for b in blocks)
    assert [b.attention.frozen_attn for b in blocks] == [sowa.clip.blocks[i].attn for i in sowa.taps]
    sowa.fit(data.load("demo", demo_root / "demo_b", None, "test")[:4], RunContext(progress=False))
    fresh = _tiny_sowa(share_adapters=True)
    fresh.load_trainable_state_dict(sowa.trainable_state_dict())
    assert torch.equal(fresh.adapters[3].blocks[0].linear.weight, sowa.adapters[0].blocks[0].linear.weight)
    linear = _tiny_sowa(adapter="linear", share_adapters=True)
    assert all(a is linear.adapters[0] for a in linear.adapters)


def test_shapes_through_every_stage() -> None:
    sowa = _tiny_sowa()
    images = _images(3)
    with torch.no_grad():
        out = sowa(images)
        assert out.image_logits.shape == (3, 2)
        assert [p.shape for p in out.layer_probabilities] == [(3, 2, SIZE, SIZE)] * 4
        assert [t.shape for t in out.patches] == [(3, 64, 64)] * 4
        assert [t.shape for t in out.adapted] == [(3, 64, 64)] * 4  # 8x8 grid, embed_dim 64
        assert sowa.text_features().shape == (2, 64)
        pred = sowa.predict(images, "any")
    assert pred.scores.shape == (3,) and pred.maps.shape == (3, SIZE, SIZE)
    assert pred.extras == {}  # zero-shot: nothing for the few-shot image fusion


def test_layer_map_is_softmax_of_upsampled_cosines() -> None:
    """§1.5: s = cos(A_l, t'), bilinear (align_corners=True), softmax over the 2 states."""
    sowa = _tiny_sowa()
    tokens = torch.randn(2, 64, 64)
    text = F.normalize(torch.randn(2, 64), dim=-1)
    probabilities = sowa.layer_probabilities(tokens, text)
    cosine = F.normalize(tokens, dim=-1) @ text.T  # [2, 64, 2]
    grid = cosine.view(2, 8, 8, 2).permute(0, 3, 1, 2)
    up = F.interpolate(grid, size=(SIZE, SIZE), mode="bilinear", align_corners=True)
    assert torch.allclose(probabilities[:, 1], torch.sigmoid(up[:, 1] - up[:, 0]), atol=1e-6)
    assert probabilities.min() >= torch.sigmoid(torch.tensor(-2.0)) - 1e-6


def test_image_score_is_softmax_over_temperature() -> None:
    sowa = _tiny_sowa()
    images = _images(2)
    with torch.no_grad():
        cls_embedding, _ = sowa.clip.encode_image(images)
        z = F.normalize(cls_embedding, dim=-1) @ sowa.text_features().T
        expected = torch.softmax(z / 0.07, dim=-1)[:, 1]
        assert torch.allclose(sowa.predict(images, "c").scores, expected, atol=1e-6)


def test_learnable_prompts_with_placeholder_context_equal_plain_text_encoding() -> None:
    """§1.4: only positions 1..12 are replaced; filled with the 'X' embeddings, the prompt is the sentence."""
    sowa = _tiny_sowa()
    prompts, clip = sowa.prompts, sowa.clip
    assert prompts.context.shape == (2, 12, 64)
    placeholder = clip.token_embedding(prompts.token_ids[:, 1:13])
    assert (prompts.token_ids[:, 1:13] == prompts.token_ids[0, 1]).all()
    with torch.no_grad():
        prompts.context.copy_(placeholder)
        sentences = [" ".join(["X"] * 12) + " object.", " ".join(["X"] * 12) + " damaged object."]
        assert torch.allclose(prompts(clip), clip.encode_text(sentences), atol=1e-5)


def test_text_features_cache_follows_in_place_updates() -> None:
    sowa = _tiny_sowa()
    with torch.no_grad():
        before = sowa.text_features()
        assert sowa.text_features() is before
        sowa.text_linear.bias.add_(1.0)
        after = sowa.text_features()
    assert not torch.allclose(before, after)
    assert torch.allclose(after, sowa._encode_text().detach())


def test_image_loss_switch_ce_on_probabilities_vs_logits() -> None:
    """§2.2: the code's CE takes the softmaxed probabilities as logits (double softmax)."""
    batch = TrainingBatch(_images(2), torch.zeros(2, SIZE, SIZE), torch.tensor([0, 1]), ("a", "a"))
    losses = {}
    for mode in ("ce_on_probs", "ce"):
        sowa = _tiny_sowa(image_loss=mode)
        with torch.no_grad():
            out = sowa(batch.images)
            segmentation = sum(
                _focal(p, batch.masks) + _dice(p[:, 1], batch.masks) + _dice(p[:, 0], 1 - batch.masks)
                for p in out.layer_probabilities
            )
            losses[mode] = (sowa.training_loss(batch) - segmentation, out.image_logits)
    probs = losses["ce"][1].softmax(-1)
    by_hand_probs = -(probs.softmax(-1)[[0, 1], [0, 1]].log()).mean()
    by_hand_logits = -(probs[[0, 1], [0, 1]].log()).mean()
    assert losses["ce_on_probs"][0].item() == pytest.approx(by_hand_probs.item(), rel=1e-5)
    assert losses["ce"][0].item() == pytest.approx(by_hand_logits.item(), rel=1e-5)


def _focal(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    pt = torch.where(g.bool(), p[:, 1] * (1 - 1e-5) + p[:, 0] * 1e-5, p[:, 0] * (1 - 1e-5) + p[:, 1] * 1e-5) + 1e-5
    return (-(1 - pt) ** 2 * pt.log()).mean()


def _dice(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return 1 - ((2 * (p * g).sum((1, 2)) + 1) / (p.sum((1, 2)) + g.sum((1, 2)) + 1)).mean()


def test_few_shot_map_adds_raw_memory_distances_and_finalize_fuses_scores() -> None:
    sowa = _tiny_sowa()
    queries, references = _images(3, seed=1), _images(2, seed=2)
    with torch.no_grad():
        zero_shot = sowa.predict(queries, "c")
        sowa.set_references(queries, "c")  # every query token is in the memory: distances ~ 0
        self_memory = sowa.predict(queries, "c")
        sowa.set_references(references, "c")
        few_shot = sowa.predict(queries, "c")
        out_q, out_r = sowa(queries), sowa(references)
    assert torch.allclose(self_memory.maps, zero_shot.maps, atol=1e-4)
    expected = zero_shot.maps.clone()
    for layer in range(4):  # raw tap tokens through visual.proj, no ln_post (§1.2, §1.8)
        q = out_q.patches[layer] @ sowa.clip.visual.proj
        r = (out_r.patches[layer] @ sowa.clip.visual.proj).reshape(-1, 64)
        d = (1 - F.normalize(q, dim=-1) @ F.normalize(r, dim=-1).T).min(dim=-1).values.view(3, 1, 8, 8)
        expected += F.interpolate(d, size=(SIZE, SIZE), mode="bilinear", align_corners=True)[:, 0]
    assert torch.allclose(few_shot.maps, expected, atol=1e-4)
    assert torch.equal(few_shot.scores, zero_shot.scores)
    final = sowa.finalize_category(few_shot)
    maxima = expected.flatten(1).max(dim=1).values
    assert torch.allclose(few_shot.extras[MAP_MAX], maxima, atol=1e-4)
    fused = 0.5 * few_shot.extras[TEXT_SCORE] + 0.5 * minmax(few_shot.extras[MAP_MAX])
    assert torch.allclose(final.scores, fused, atol=1e-6)
    sowa.set_references(torch.empty(0, 3, SIZE, SIZE), "c")
    assert sowa.finalize_category(sowa.predict(queries, "c")).scores.equal(zero_shot.scores)


def test_memory_features_switch_uses_adapted_tokens() -> None:
    sowa = _tiny_sowa(memory_features="adapted")
    with torch.no_grad():
        out = sowa(_images(1))
    assert all(m is a for m, a in zip(sowa.memory_tokens(out), out.adapted))
    with pytest.raises(ValueError, match="memory_features"):
        _tiny_sowa(memory_features="hfwa")


def test_training_masks_threshold_and_mosaic_label_switches(demo_root: Path) -> None:
    """§2.2: training masks are bilinear then > 0 (slightly dilated); §5.4.9: mosaic label fix."""
    samples = [s for s in data.load("demo", demo_root / "demo_a", None, "test")]
    pools = group_by_defect(samples)
    good = [s for s in samples if s.label == 0][:1]
    bad = [s for s in samples if s.label == 1][:1]
    kwargs = dict(image_size=50, normalization="clip", mosaic_rate=0.0)
    strict = load_training_batch(bad, pools, epoch_rng(0, 0), **kwargs).masks
    loose = load_training_batch(bad, pools, epoch_rng(0, 0), mask_threshold=0.0, **kwargs).masks
    assert (loose >= strict).all() and loose.sum() > strict.sum()
    labels = {
        fix: [int(load_training_batch(good, pools, epoch_rng(seed, 0), image_size=28, normalization="clip",
                                      mosaic_rate=1.0, mosaic_label_fix=fix).labels) for seed in range(6)]
        for fix in (False, True)
    }
    assert labels[False] == [0] * 6  # the mosaic inherits the replaced sample's label (code)
    assert 1 in labels[True]


def test_mask_resize_by_hand_antialiased_two_uint8_passes() -> None:
    """4 -> 2 shrink of one pixel at (0, 2), as PIL does it (sowa §2.2): a triangle of support 2 per
    output pixel gives the weights (3, 3, 1)/7 and (1, 3, 3)/7; the horizontal pass is stored as uint8
    (1/7 -> 36, 3/7 -> 109), then the vertical one (36·3/7 -> 15, 109·3/7 -> 47). Plain bilinear
    would only touch column 1."""
    mask = np.zeros((4, 4), bool)
    mask[0, 2] = True
    for threshold, expected in [(0.0, [[1, 1], [0, 0]]), (14.5, [[1, 1], [0, 0]]), (15.5, [[0, 1], [0, 0]]),
                                (46.5, [[0, 1], [0, 0]]), (47.5, [[0, 0], [0, 0]])]:
        assert mask_to_tensor(mask, 2, threshold / 255).int().tolist() == expected, threshold


@pytest.mark.parametrize("height, width, size", [(1024, 1024, 336), (700, 900, 336), (200, 300, 336), (64, 64, 50), (517, 333, 518)])
def test_mask_resize_equals_torchvision_pil_resize(height: int, width: int, size: int) -> None:
    """The reference's mask transform: PIL 'L' image -> torchvision Resize (bilinear) -> ToTensor."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(height + width + size)
    mask = np.zeros((height, width), bool)
    for _ in range(6):
        top, left = rng.integers(0, height), rng.integers(0, width)
        mask[top : top + rng.integers(1, height // 4), left : left + rng.integers(1, width // 4)] = True
    reference = TF.to_tensor(TF.resize(Image.fromarray(mask.astype(np.uint8) * 255, mode="L"), [size, size]))[0]
    for threshold in (0.0, 0.5):
        assert torch.equal(mask_to_tensor(mask, size, threshold), reference > threshold)


def test_training_lowers_loss_keeps_clip_frozen_and_is_deterministic(demo_root: Path) -> None:
    auxiliary = data.load("demo", demo_root / "demo_b", None, "test")
    sowa = _tiny_sowa(epochs=4)
    frozen = {k: v.clone() for k, v in sowa.clip.state_dict().items()}
    initial = sowa.trainable_state_dict()
    probe = load_training_batch(auxiliary[:8], group_by_defect(auxiliary), epoch_rng(0, 0), image_size=SIZE,
                                normalization="clip", mosaic_rate=0.0, mask_threshold=0.0)
    with torch.no_grad():
        before = sowa.training_loss(probe).item()
    log = sowa.fit(auxiliary, RunContext(progress=False))
    sowa.eval()
    with torch.no_grad():
        after = sowa.training_loss(probe).item()
    assert len(log["loss"]) == 4 * 2 and after < before
    assert all(torch.equal(frozen[k], v) for k, v in sowa.clip.state_dict().items())
    trained = sowa.trainable_state_dict()
    assert set(trained) == set(initial) and all(not torch.equal(trained[k], initial[k]) for k in trained)
    assert not any(k.startswith("clip.") or "frozen_attn" in k for k in trained)

    twin = _tiny_sowa(epochs=4)
    twin.fit(auxiliary, RunContext(progress=False))
    assert all(torch.equal(v, twin.trainable_state_dict()[k]) for k, v in trained.items())
    fresh = _tiny_sowa()
    fresh.load_trainable_state_dict(trained)
    images = _images(2)
    with torch.no_grad():
        assert torch.equal(fresh.predict(images, "c").maps, sowa.predict(images, "c").maps)


def test_mosaic_rate_is_an_option_the_profiles_set_by_auxiliary_dataset(demo_root: Path) -> None:
    """§2.4: mosaics when training on MVTec AD only; study protocol, so the profiles hold it and the
    method, built by hand without it, says what to pass."""
    from sowa_lib.profiles import auxiliary_training_options

    assert auxiliary_training_options("paper", "sowa", "mvtec") == {"mosaic_rate": 0.2}
    assert auxiliary_training_options("paper", "sowa", "visa") == {"mosaic_rate": 0.0}
    assert auxiliary_training_options("demo", "sowa", "demo_a") == {"mosaic_rate": 0.2}  # demo_a plays MVTec AD
    auxiliary = data.load("demo", demo_root / "demo_b", None, "test")
    with pytest.raises(ValueError, match="mosaic_rate="):
        build("sowa", profile="demo").fit(auxiliary, RunContext(progress=False))


def test_fit_resumes_from_epoch_checkpoints(demo_root: Path, tmp_path: Path) -> None:
    auxiliary = data.load("demo", demo_root / "demo_b", None, "test")
    straight = _tiny_sowa(epochs=2)
    straight.fit(auxiliary, RunContext(progress=False))
    first = _tiny_sowa(epochs=1)
    first.fit(auxiliary, RunContext(checkpoint_dir=tmp_path, progress=False))
    resumed = _tiny_sowa(epochs=2)
    log = resumed.fit(auxiliary, RunContext(checkpoint_dir=tmp_path, progress=False))
    assert len(log["loss"]) == 4
    assert all(torch.allclose(v, resumed.trainable_state_dict()[k]) for k, v in straight.trainable_state_dict().items())


@pytest.mark.parametrize("shots", [0, 4])
def test_demo_runs_give_finite_maps_and_metrics(demo_root: Path, shots: int) -> None:
    sowa = _tiny_sowa()
    sowa.fit(data.load("demo", demo_root / "demo_b", None, "test"), RunContext(progress=False))
    sowa.eval()
    root = demo_root / "demo_a"
    category = data.categories("demo", root)[0]
    test, train = data.load("demo", root, category, "test"), data.load("demo", root, category, "train")
    sowa.set_references(load_images(draw_references(train, shots, seed=0), SIZE), category)
    with torch.no_grad():
        pred = sowa.finalize_category(Prediction.concat([sowa.predict(b, category) for b in load_images(test, SIZE).split(3)]))
    assert torch.isfinite(pred.maps).all() and torch.isfinite(pred.scores).all()
    labels = torch.tensor([s.label for s in test])
    metrics = category_metrics(pred.scores.numpy(), labels.numpy(), pred.maps.numpy(), load_masks(test, SIZE).numpy())
    values = [v for k, v in metrics.items() if k != "reasons"]
    assert len(values) == 7 and all(0.0 <= v <= 1.0 for v in values)


def test_linear_adapter_replaces_window_attention_with_one_linear_per_layer() -> None:
    hfwa, linear = _tiny_sowa(), _tiny_sowa(adapter="linear")
    width = linear.clip.width
    assert all(isinstance(a, torch.nn.Linear) and a.in_features == width for a in linear.adapters)
    adapters = {n: p.numel() for n, p in linear.named_parameters() if p.requires_grad and n.startswith("adapters.")}
    assert sum(adapters.values()) == len(linear.taps) * width * width  # bias-free, as model/sowa_linear.yaml
    images = torch.randn(2, 3, linear.image_size, linear.image_size)
    with torch.no_grad():
        out = linear(images)
        tokens = out.patches[0]
        expected = linear.project(linear.adapters[0](tokens))
    assert torch.allclose(out.adapted[0], expected, atol=1e-6)
    assert [p.shape for p in out.layer_probabilities] == [p.shape for p in hfwa(images).layer_probabilities]
    with pytest.raises(ValueError, match="adapter"):
        _tiny_sowa(adapter="conv")


# ---------------------------------------------------------------- schedule and kept checkpoint (§2.3)


def test_train_loss_monitor_by_hand() -> None:
    """Best epoch, plateau reduction after 6 bad epochs (patience 5) and early stop after 10."""
    from sowa_lib.training import TrainLossMonitor

    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3)
    monitor = TrainLossMonitor(optimizer, plateau=True)
    stops, lrs = [], []
    for epoch, loss in enumerate([1.0, 0.5] + [0.7] * 10):
        stops.append(monitor.update(epoch, loss, lambda: {"epoch": torch.tensor(epoch)}))
        lrs.append(optimizer.param_groups[0]["lr"])
    assert monitor.best_epoch == 1 and int(monitor.best_state["epoch"]) == 1
    assert lrs[:7] == [1e-3] * 7 and math.isclose(lrs[7], 1e-4)  # epochs 2-7 are the six bad ones
    assert stops == [False] * 11 + [True]  # the tenth epoch without improvement


def _scripted_fit(monkeypatch, losses: list[float], checkpoint_dir: Path | None = None, **options) -> tuple[SOWA, list[float], dict]:
    """SOWA.fit with the training loop replaced by one that sets the text Linear's bias to the epoch
    number and reports ``losses[epoch]`` (one step per epoch): what fit keeps, hand-checkable."""
    import sowa_lib.methods.sowa as sowa_module

    method = build("sowa", profile="demo", epochs=len(losses), mosaic_rate=0.0, **options)
    seen_lr: list[float] = []

    def scripted(samples, loss_fn, optimizer, schedule, *, start_epoch=0, on_epoch_end=None, **_):
        steps = []
        for epoch in range(start_epoch, schedule.epochs):
            seen_lr.append(optimizer.param_groups[0]["lr"])
            with torch.no_grad():
                method.text_linear.bias.fill_(epoch)
            steps.append(losses[epoch])
            if on_epoch_end(epoch, steps):
                break
        return steps

    monkeypatch.setattr(sowa_module, "train_segmentation", scripted)
    samples = [data.Sample(Path(f"{i}.png"), None, 0, "c", "good", "test", "x", Path("/x")) for i in range(8)]  # batch 8: one step
    log = method.fit(samples, RunContext(checkpoint_dir=checkpoint_dir, progress=False))
    return method, seen_lr, log


def test_keep_checkpoint_and_lr_schedule_switches(monkeypatch, tmp_path: Path) -> None:
    losses = [1.0, 0.5] + [0.7] * 13
    best, lrs, log = _scripted_fit(monkeypatch, losses, tmp_path / "best")
    assert torch.all(best.text_linear.bias == 1) and log["kept_epoch"] == 1
    assert len(lrs) == 12 and math.isclose(lrs[-1], 1e-4)  # early stop after epoch 11; lr cut after epoch 7
    last, lrs, log = _scripted_fit(monkeypatch, losses, keep_checkpoint="last")
    assert torch.all(last.text_linear.bias == 14) and len(lrs) == 15 and log["kept_epoch"] == 14
    _, lrs, _ = _scripted_fit(monkeypatch, losses, keep_checkpoint="last", lr_schedule="none")
    assert lrs == [1e-3] * 15
    # resumed after it stopped: no more training, the best epoch's weights read back from its file
    resumed, lrs, _ = _scripted_fit(monkeypatch, losses, tmp_path / "best")
    assert lrs == [] and torch.all(resumed.text_linear.bias == 1)


def test_one_epoch_keeps_the_last_weights_whatever_the_switches(monkeypatch) -> None:
    for options in ({}, {"keep_checkpoint": "last", "lr_schedule": "none"}):
        method, lrs, _ = _scripted_fit(monkeypatch, [0.3], **options)
        assert torch.all(method.text_linear.bias == 0) and lrs == [1e-3]
