"""April-GAN (spec april_gan_winclip_peers §1) on the tiny CLIP and the generated demo benchmark,
plus the shared few-shot scoring, mosaic and training loop it uses."""
from __future__ import annotations

import dataclasses
import inspect
import math
import random

import pytest
import torch
import torch.nn.functional as F

from sowa_lib.backbones.clip import load_clip
from sowa_lib.data import demo, load
from sowa_lib.data.augment import draw_tiles, group_by_defect, mosaic
from sowa_lib.data.transforms import load_images
from sowa_lib.methods import build
from sowa_lib.methods.april_gan import AprilGAN
from sowa_lib.methods.base import Prediction, RunContext
from sowa_lib.profiles import AUXILIARY_TRAINING, auxiliary_training_options
from sowa_lib.methods.fewshot import few_shot_image_scores, finalize_few_shot
from sowa_lib.prompts import APRIL_GAN
from sowa_lib.training import TrainingSchedule, epoch_rng, load_training_batch

torch.set_num_threads(1)
SIZE = 56


def tiny_april_gan(**options):
    clip = load_clip("tiny-clip", image_size=SIZE, quick_gelu=False, seed=0)
    defaults = {"image_size": SIZE, "taps": (0, 1, 2, 3), "epochs": 2, "mosaic_rate": 0.2}
    return build("april_gan", backbone=clip, **{**defaults, **options})


@pytest.fixture(scope="module")
def demo_roots(tmp_path_factory):
    return demo.generate(tmp_path_factory.mktemp("demo"), image_size=64, n_train=3, n_test_good=2, n_test_bad=2)


@pytest.fixture(scope="module")
def auxiliary(demo_roots):
    return load("demo", demo_roots["demo_b"], split="test")


def test_layer_maps_upsample_logits_before_softmax():
    method = tiny_april_gan()
    text = method.text_features("bottle")
    _, taps = method.clip.encode_image(torch.randn(1, 3, SIZE, SIZE), method.taps)
    probabilities = method.layer_probabilities(taps, text)
    assert len(probabilities) == 4 and probabilities[0].shape == (1, 2, SIZE, SIZE)
    tokens = torch.nn.functional.normalize(method.heads[2](taps[2][:, 1:]), dim=-1)
    logits = 100 * tokens @ torch.nn.functional.normalize(text, dim=-1).T  # [1, 16, 2]
    grid = logits.transpose(1, 2).reshape(1, 2, 4, 4)
    up = torch.nn.functional.interpolate(grid, size=(SIZE, SIZE), mode="bilinear", align_corners=True)
    assert torch.allclose(probabilities[2], up.softmax(dim=1), atol=1e-5)


def test_heads_are_the_only_trainable_weights_and_seeded():
    a, b = tiny_april_gan(), tiny_april_gan()
    state = a.trainable_state_dict()
    assert sorted(state) == [f"heads.{i}.{p}" for i in range(4) for p in ("bias", "weight")]
    assert state["heads.0.weight"].shape == (a.clip.embed_dim, a.clip.width)
    assert all(torch.equal(state[k], v) for k, v in b.trainable_state_dict().items())
    torch.manual_seed(111)  # the default seed, set right before the heads are created
    expected = [torch.nn.Linear(a.clip.width, a.clip.embed_dim) for _ in range(4)]
    assert all(torch.equal(state[f"heads.{i}.weight"], head.weight) for i, head in enumerate(expected))


def test_reference_schedule_is_the_profiles_by_auxiliary_dataset_and_the_method_only_reads_options(auxiliary):
    """§1.7: 3 epochs with mosaic 0.2 on MVTec AD, 15 without on VisA; the demo's auxiliary sets play
    those roles. The method reads its ``epochs``/``mosaic_rate`` options, whatever the samples' dataset."""
    assert auxiliary_training_options("paper", "april_gan", "mvtec") == {"epochs": 3, "mosaic_rate": 0.2}
    assert auxiliary_training_options("paper", "april_gan", "visa") == {"epochs": 15, "mosaic_rate": 0.0}
    assert auxiliary_training_options("demo", "april_gan", "demo_b") == AUXILIARY_TRAINING[("april_gan", "visa")]
    assert auxiliary_training_options("paper", "april_gan", "btad") == {}
    as_mvtec = [dataclasses.replace(s, dataset="mvtec") for s in auxiliary]
    schedule = tiny_april_gan(epochs=15, mosaic_rate=0.0).schedule(seed=111)
    assert (schedule.epochs, schedule.mosaic_rate, schedule.seed) == (15, 0.0, 111)
    with pytest.raises(ValueError, match="epochs= and mosaic_rate="):
        tiny_april_gan(epochs=None, mosaic_rate=None).fit(as_mvtec, RunContext(progress=False))


def test_training_reduces_the_loss_and_resumes_exactly(auxiliary, tmp_path):
    method = tiny_april_gan()
    fixed = load_training_batch(auxiliary[:8], group_by_defect(auxiliary), random.Random(0), image_size=SIZE, normalization="clip", mosaic_rate=0.0)
    with torch.no_grad():
        before = method.training_loss(fixed).item()
    log = method.fit(auxiliary, RunContext(checkpoint_dir=tmp_path, progress=False))
    with torch.no_grad():
        after = method.training_loss(fixed).item()
    assert after < before and len(log["loss"]) == 2 * 2  # 16 samples, batch 8, 2 epochs
    saved = torch.load(tmp_path / "epoch_001.pt", weights_only=True)
    assert set(saved["state"]) == set(method.trainable_state_dict())
    (group,) = saved["optimizer"]["param_groups"]  # Adam with the reference's default lr and betas (§1.7)
    assert (group["lr"], tuple(group["betas"]), group["weight_decay"]) == (1e-3, (0.5, 0.999), 0)
    (tmp_path / "epoch_001.pt").unlink()  # interrupted after epoch 0: the resumed run redoes epoch 1
    resumed = tiny_april_gan()
    resumed_log = resumed.fit(auxiliary, RunContext(checkpoint_dir=tmp_path, progress=False))
    assert resumed_log["loss"] == pytest.approx(log["loss"])
    assert all(torch.allclose(v, method.trainable_state_dict()[k]) for k, v in resumed.trainable_state_dict().items())


def test_predict_zero_and_few_shot_single_encoder_pass(demo_roots):
    method = tiny_april_gan()
    category = "brick"
    test = load("demo", demo_roots["demo_a"], category, "test")
    train = load("demo", demo_roots["demo_a"], category, "train")
    images = load_images(test, SIZE)
    zero = method.finalize_category(method.predict(images, category))
    assert zero.maps.shape == (len(test), SIZE, SIZE) and torch.all((zero.maps >= 0) & (zero.maps <= 4))
    text = method.text_features(category)
    cls, _ = method.clip.encode_image(images)
    assert torch.allclose(zero.scores, (100 * cls @ text.T).softmax(-1)[:, 1], atol=1e-5)
    method.set_references(load_images(train[:2], SIZE), category)
    calls = []
    hook = method.clip.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    raw = method.predict(images, category)
    hook.remove()
    assert len(calls) == 1  # the encoder runs once per batch, zero- and few-shot share it
    assert torch.all(raw.maps >= zero.maps - 1e-6) and torch.all(raw.maps <= zero.maps + 8)
    final = method.finalize_category(raw)
    maxima = raw.maps.flatten(1).max(1).values
    expected = 0.5 * (zero.scores + (maxima - maxima.min()) / (maxima.max() - maxima.min()))
    assert torch.allclose(final.scores, expected, atol=1e-6)
    again = tiny_april_gan()
    again.set_references(load_images(train[:2], SIZE), category)
    assert torch.equal(again.predict(images, category).maps, raw.maps)


def test_few_shot_image_score_modes_by_hand():
    text, maxima = torch.tensor([0.2, 0.4, 0.6]), torch.tensor([1.0, 3.0, 2.0])
    assert torch.allclose(few_shot_image_scores(text, maxima, "transductive_minmax"), torch.tensor([0.1, 0.7, 0.55]))
    assert torch.allclose(few_shot_image_scores(text, maxima, "raw"), torch.tensor([0.6, 1.7, 1.3]))
    zero_shot = Prediction(scores=text, maps=torch.zeros(3, 2, 2))
    assert finalize_few_shot(zero_shot, "transductive_minmax") is zero_shot
    with pytest.raises(ValueError):
        few_shot_image_scores(text, maxima, "rank")


def test_mosaic_tiles_row_major_with_masks(auxiliary):
    pools = group_by_defect(auxiliary)[auxiliary[0].category]
    tiles = draw_tiles(pools, random.Random(3))
    image, mask = mosaic(tiles)
    first = tiles[0].read_image()
    h, w = first.shape[:2]
    assert image.shape == (2 * h, 2 * w, 3) and mask.shape == (2 * h, 2 * w)
    assert (image[:h, :w] == first).all() and (image[h:, w:] == tiles[3].read_image()).all()
    assert (mask[:h, w:] == tiles[1].read_mask()).all()
    assert draw_tiles(pools, random.Random(3)) == tiles


def test_training_batches_are_seeded_per_epoch(auxiliary):
    pools = group_by_defect(auxiliary)
    batches = [load_training_batch(auxiliary[:4], pools, epoch_rng(111, 0), image_size=SIZE, normalization="clip", mosaic_rate=0.5) for _ in range(2)]
    assert torch.equal(batches[0].images, batches[1].images) and torch.equal(batches[0].masks, batches[1].masks)
    assert set(batches[0].masks.unique().tolist()) <= {0.0, 1.0}
    assert TrainingSchedule(epochs=3).batch_size == 8


def test_precision_switch_is_the_references_cuda_only_autocast() -> None:
    images = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    autocast, fp32 = (tiny_april_gan(precision=p).eval() for p in ("fp16_autocast", "fp32"))
    assert autocast.precision == "fp16_autocast"  # the reference's default
    # torch.cuda.amp.autocast does nothing on CPU, in the reference as here: identical results
    first, second = autocast.predict(images, "bottle"), fp32.predict(images, "bottle")
    assert torch.equal(first.maps, second.maps) and torch.equal(first.scores, second.scores)
    with pytest.raises(ValueError, match="precision"):
        tiny_april_gan(precision="fp8")


def test_defaults_are_the_reference_settings():
    defaults = {k: p.default for k, p in inspect.signature(AprilGAN.__init__).parameters.items() if k != "self"}
    assert defaults == {
        "backbone": "ViT-L-14-336",
        "pretrained": "openai",
        "backbone_checkpoint": None,  # the CLIP weights of the tag, not of a local file
        "image_size": 518,
        "taps": (5, 11, 17, 23),  # 0-based: the paper's blocks 6/12/18/24 (§1.2)
        "activation": "gelu",  # the 518-px path's exact GELU (§1.1)
        "image_score": "transductive_minmax",
        "reference_replacement": True,
        "epochs": None,  # by auxiliary dataset: profiles.AUXILIARY_TRAINING
        "mosaic_rate": None,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "betas": (0.5, 0.999),
        "seed": 111,
        "precision": "fp16_autocast",
        "dice_single_image_quirk": True,  # a batch of one: Dice over the mask's rows (official train.py)
        "round_fp16": True,  # the OpenAI loader builds in fp16 before loading
        "checkpoint": None,  # trained heads are ours unless a file is given (the authors' or ours)
    }
    assert AprilGAN.draws_references_with_replacement({"reference_replacement": True})  # torch.randint (§1.6)
    assert not AprilGAN.draws_references_with_replacement({"reference_replacement": False})


# ---------------------------------------------------------------------------- hand-composed reference
# April-GAN written out from spec §1.5-§1.6 with open_clip's own forward and forward hooks on the
# blocks, sharing no code with sowa_lib.methods.april_gan / fewshot / ops.


def block_outputs_by_hand(clip, images: torch.Tensor, blocks) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """open_clip's image embedding (L2-normalised) and the raw outputs of the given 0-based blocks."""
    outputs = {}
    hooks = [clip.blocks[b].register_forward_hook(lambda m, i, o, b=b: outputs.__setitem__(b, o)) for b in blocks]
    embedding = F.normalize(clip.model.visual(images), dim=-1)
    for hook in hooks:
        hook.remove()
    return embedding, [outputs[b] for b in blocks]


def to_image(patch_values: torch.Tensor) -> torch.Tensor:
    """[B, T, C] patch values -> [B, C, SIZE, SIZE], bilinear with align_corners=True (§1.5)."""
    side = int(patch_values.shape[1] ** 0.5)
    grid = patch_values.permute(0, 2, 1).reshape(patch_values.shape[0], -1, side, side)
    return F.interpolate(grid, size=(SIZE, SIZE), mode="bilinear", align_corners=True)


@torch.no_grad()
def april_gan_by_hand(method, images, references, category):
    clip, layers = method.clip, method.taps
    sentences = [APRIL_GAN.sentences(category, abnormal) for abnormal in (False, True)]
    groups = [F.normalize(clip.model.encode_text(clip.tokenize(group)), dim=-1) for group in sentences]
    text = torch.stack([F.normalize(g.mean(dim=0), dim=0) for g in groups])  # [2, D]
    embedding, taps = block_outputs_by_hand(clip, images, layers)
    probability = (100 * embedding @ text.T).softmax(dim=-1)[:, 1]
    zero_shot = 0
    for head, tokens in zip(method.heads, taps):
        logits = 100 * F.normalize(head(tokens[:, 1:]), dim=-1) @ text.T  # [B, T, 2]
        zero_shot = zero_shot + to_image(logits).softmax(dim=1)[:, 1]  # summed, not averaged
    _, memory = block_outputs_by_hand(clip, references, layers)
    few_shot = 0
    for query, bank in zip(taps, memory):
        bank = bank[:, 1:].reshape(-1, bank.shape[-1])  # raw tokens of all references, CLS dropped
        cos = F.normalize(query[:, 1:], dim=-1) @ F.normalize(bank, dim=-1).T
        few_shot = few_shot + to_image((1 - cos).min(dim=-1).values[..., None])[:, 0]  # no ½ factor
    maps = zero_shot + few_shot
    maxima = maps.flatten(1).max(dim=1).values
    return {
        "zero_scores": probability,
        "zero_maps": zero_shot,
        "few_maps": maps,
        "few_scores": 0.5 * (probability + (maxima - maxima.min()) / (maxima.max() - maxima.min())),
    }


def test_zero_and_few_shot_equal_a_hand_composed_reference():
    method = tiny_april_gan()
    generator = torch.Generator().manual_seed(1)
    images, references = torch.randn(3, 3, SIZE, SIZE, generator=generator), torch.randn(2, 3, SIZE, SIZE, generator=generator)
    expected = april_gan_by_hand(method, images, references, "bottle")
    method.set_references(torch.empty(0, 3, SIZE, SIZE), "bottle")
    zero = method.finalize_category(method.predict(images, "bottle"))
    assert torch.allclose(zero.scores, expected["zero_scores"], atol=1e-6)
    assert torch.allclose(zero.maps, expected["zero_maps"], atol=1e-5)
    method.set_references(references, "bottle")
    few = method.finalize_category(method.predict(images, "bottle"))
    assert torch.allclose(few.maps, expected["few_maps"], atol=1e-5)
    assert torch.allclose(few.scores, expected["few_scores"], atol=1e-5)


# ---------------------------------------------------------------------------- batch-of-one Dice (§1.7)


def official_binary_dice_loss(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The reference ``BinaryDiceLoss`` written literally: N = targets.size()[0], both viewed as (N, -1),
    smooth 1, ``1 - Σ dice / N``. ``train.py`` hands it ``mask.squeeze()``, i.e. [H, W] for one image."""
    n = targets.size()[0]
    input_flat, target_flat = inputs.reshape(n, -1), targets.reshape(n, -1)
    dice = (2 * (input_flat * target_flat).sum(1) + 1) / (input_flat.sum(1) + target_flat.sum(1) + 1)
    return 1 - dice.sum() / n


def test_single_image_dice_averages_over_rows_as_the_official_squeeze():
    from sowa_lib.losses import dice_loss

    p = torch.tensor([[[0.5, 1.0], [0.0, 0.25]]])
    g = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # per image: (2·1.5 + 1) / (1.75 + 2 + 1) = 4/4.75; per row: (4/4.5 + 1/1.25) / 2
    assert math.isclose(float(dice_loss(p, g)), 1 - 4 / 4.75, rel_tol=1e-6)
    assert math.isclose(float(dice_loss(p, g, per_row=True)), 1 - (4 / 4.5 + 1 / 1.25) / 2, rel_tol=1e-6)
    probabilities = torch.rand(1, 7, 9, generator=torch.Generator().manual_seed(0))
    masks = (torch.rand(1, 7, 9, generator=torch.Generator().manual_seed(1)) > 0.6).float()
    assert torch.allclose(dice_loss(probabilities, masks, per_row=True), official_binary_dice_loss(probabilities, masks.squeeze()))
    assert torch.allclose(dice_loss(probabilities, masks), official_binary_dice_loss(probabilities, masks))


@pytest.mark.parametrize(("quirk", "batch", "per_row"), [(True, 1, True), (True, 2, False), (False, 1, False)])
def test_training_loss_uses_the_row_dice_only_for_a_batch_of_one(monkeypatch, quirk: bool, batch: int, per_row: bool):
    import sowa_lib.methods.april_gan as april_gan_module
    from sowa_lib.losses import dice_loss
    from sowa_lib.training import TrainingBatch

    seen = []
    monkeypatch.setattr(april_gan_module, "dice_loss", lambda p, g, rows=False: seen.append(rows) or dice_loss(p, g, rows))
    method = tiny_april_gan(dice_single_image_quirk=quirk)
    masks = torch.zeros(batch, SIZE, SIZE)
    masks[:, 10:20, 10:30] = 1
    method.training_loss(TrainingBatch(torch.randn(batch, 3, SIZE, SIZE), masks, torch.ones(batch, dtype=torch.long), ("bottle",) * batch))
    assert seen == [per_row] * 4  # one Dice per tapped layer
