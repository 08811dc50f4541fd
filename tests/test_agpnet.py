"""AGPNet (spec agpnet) and its DINO backbone: equations by hand, schedules at their end points, EMA,
shapes, training in every setting, resume after interruption, determinism, ablation options."""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sowa_lib import metrics, methods
from sowa_lib.backbones.taps import layer_norm_sum, minmax_per_sample
from sowa_lib.errors import WeightsNotFoundError
from sowa_lib.backbones.dino import TINY_DINO, explicit_attention, load_dino
from sowa_lib.data import demo
from sowa_lib.data.sample import Sample
from sowa_lib.data.transforms import load_images, load_masks
from sowa_lib.methods.agpnet import AGPNet, extractor, model as agpnet_model, perturbation, unstated
from sowa_lib.methods.base import RunContext
from sowa_lib.errors import StaleCheckpointError
from sowa_lib.training import EpochCheckpoints, shuffled_batches

QUIET = RunContext(progress=False)
pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64  # tiny-dino at 64 px: a 4×4 token grid


def tiny(**overrides) -> AGPNet:
    options = dict(backbone=TINY_DINO, image_size=SIZE, taps=(0, 1, 2, 3), epochs=4, batch_size=4, learning_rate=1e-3,
                   ema_every=1, ema_momentum=0.9, smoothing_sigma=1.0, score_pool=4, few_shot_folds=4)
    return methods.build("agpnet", **{**options, **overrides})


# ------------------------------------------------------------------------------- generated data


def _write(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _normal(rng: np.random.Generator) -> np.ndarray:
    """A striped texture with a random phase and mild noise."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    phase = rng.uniform(0, 2 * np.pi)
    base = 0.5 + 0.3 * np.sin(xx / 3.0 + phase)[..., None] * np.array([1.0, 0.6, 0.3])
    return np.clip((base + rng.normal(0, 0.03, (SIZE, SIZE, 3))) * 255, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, list[Sample]]:
    """8 normal train images, 3 normal and 3 anomalous (bright square) test images of one category."""
    root = tmp_path_factory.mktemp("stripes")
    rng = np.random.default_rng(0)

    def sample(split: str, index: int, anomalous: bool) -> Sample:
        image, mask_path = _normal(rng), None
        defect = "square" if anomalous else "good"
        if anomalous:
            mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
            top, left = rng.integers(8, SIZE - 24, 2)
            mask[top:top + 16, left:left + 16] = 255
            image[mask > 0] = (250, 20, 200)
            mask_path = _write(mask, root / "ground_truth" / defect / f"{index:03d}_mask.png")
        path = _write(image, root / split / defect / f"{index:03d}.png")
        return Sample(path, mask_path, int(anomalous), "stripes", defect, split, "generated", root)

    train = [sample("train", i, False) for i in range(8)]
    test = [sample("test", i, i >= 3) for i in range(6)]
    return {"train": train, "test": test}


# ------------------------------------------------------------------------------- DINO backbone


def test_explicit_attention_reproduces_the_fused_block() -> None:
    dino = load_dino(TINY_DINO, None, image_size=SIZE, seed=0)
    block = dino.model.blocks[0]
    x = torch.randn(2, 17, dino.width)
    weights = explicit_attention(block, x)
    assert weights.shape == (2, dino.num_heads, 17, 17)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, dino.num_heads, 17))
    attn = block.attn
    v = attn.qkv(block.norm1(x)).reshape(2, 17, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)[2]
    by_hand = attn.proj((weights @ v).transpose(1, 2).reshape(2, 17, -1))
    torch.testing.assert_close(by_hand, attn(block.norm1(x)), atol=1e-5, rtol=1e-5)


def test_dino_taps_and_cls_attention_shapes() -> None:
    dino = load_dino(TINY_DINO, None, image_size=SIZE, seed=0)
    images = torch.randn(3, 3, SIZE, SIZE)
    taps, attention = dino(images, taps=[3, 1], attention_blocks=[3])
    assert [t.shape for t in taps] == [(3, 16, dino.width)] * 2
    assert attention.shape == (3, 1, dino.num_heads, 16)
    assert torch.all(attention.sum(-1) < 1) and torch.all(attention > 0)  # the CLS key takes the rest
    full = dino.model.forward_features(images)  # timm's own path: final norm after block 3
    torch.testing.assert_close(dino.model.norm(taps[0]), full[:, 1:], atol=1e-5, rtol=1e-5)
    with pytest.raises(IndexError, match="0-based"):
        dino(images, taps=[4])


def test_dino_loads_a_local_checkpoint_and_resamples_the_grid(tmp_path: Path) -> None:
    source = load_dino(TINY_DINO, None, image_size=SIZE, seed=3)
    path = tmp_path / "dino.pth"
    torch.save(source.model.state_dict(), path)
    same = load_dino(TINY_DINO, None, checkpoint=path, image_size=SIZE)
    images = torch.randn(1, 3, SIZE, SIZE)
    torch.testing.assert_close(same(images, [3])[0][0], source(images, [3])[0][0])
    assert source.weights_id == "tiny-dino:random" and same.weights_id.startswith("tiny-dino:file:") and len(same.weights_id) == 27
    bigger = load_dino(TINY_DINO, None, checkpoint=path, image_size=2 * SIZE)
    assert bigger.model.pos_embed.shape[1] == 1 + 64
    torch.testing.assert_close(bigger.model.pos_embed[:, 0], source.model.pos_embed[:, 0])


def test_missing_dino_file_says_what_to_download_and_where() -> None:
    with pytest.raises(WeightsNotFoundError, match=r"dino_deitsmall16_pretrain\.pth.*checkpoint="):
        load_dino(pretrained=None, checkpoint="/nonexistent/dino_deitsmall16_pretrain.pth")
    with pytest.raises(ValueError, match="either pretrained"):
        load_dino(checkpoint="/nonexistent/dino_deitsmall16_pretrain.pth")  # the default tag and a file


# ------------------------------------------------------------------------------- schedules


def test_schedules_at_their_end_points_for_the_paper_500_epochs() -> None:
    lam, ratio, lr = perturbation.feature_noise_intensity, perturbation.image_noise_ratio, perturbation.learning_rate_factor
    assert lam(1, 500) == 0.0 and lam(400, 500) == 1.0 and lam(500, 500) == 1.0
    assert lam(200, 500) == pytest.approx(199 / 399)
    assert ratio(1, 500) == 0.6 and ratio(100, 500) == 0.6 and ratio(400, 500) == 1.0 and ratio(500, 500) == 1.0
    assert ratio(250, 500) == pytest.approx(0.8)
    assert lr(200, 500) == 1.0 and lr(201, 500) == 0.1 and lr(500, 500) == 0.1


def test_schedules_keep_their_shape_when_compressed() -> None:
    assert [perturbation.feature_noise_intensity(e, 5) for e in range(1, 6)] == pytest.approx([0, 1 / 3, 2 / 3, 1, 1])
    assert [perturbation.image_noise_ratio(e, 5) for e in range(1, 6)] == pytest.approx([0.6, 0.6 + 0.4 / 3, 0.6 + 0.8 / 3, 1, 1])
    assert [perturbation.learning_rate_factor(e, 5) for e in range(1, 6)] == [1, 1, 0.1, 0.1, 0.1]


def test_ema_update_on_a_toy_module() -> None:
    student, teacher = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[1.0, 2.0]])), student.bias.fill_(4.0)
        teacher.weight.copy_(torch.tensor([[0.0, 10.0]])), teacher.bias.fill_(0.0)
    perturbation.ema_update(teacher, student, momentum=0.75)
    torch.testing.assert_close(teacher.weight, torch.tensor([[0.25, 8.0]]))
    torch.testing.assert_close(teacher.bias, torch.tensor([1.0]))
    torch.testing.assert_close(student.weight, torch.tensor([[1.0, 2.0]]))  # the student is untouched


def test_paper_training_defaults() -> None:
    defaults = {name: p.default for name, p in inspect.signature(AGPNet.__init__).parameters.items()}
    assert (defaults["ema_momentum"], defaults["ema_every"], defaults["learning_rate_decay_fraction"]) == (0.9999, 10, 0.4)
    assert (defaults["few_shot_folds"], defaults["batch_size"], defaults["epochs"], defaults["decoder_depth"]) == (32, 32, 500, 4)


def test_teacher_follows_every_ema_every_steps_inside_training(dataset, monkeypatch) -> None:
    calls = []
    real_update = perturbation.ema_update

    def recording_update(teacher, student, momentum):
        calls.append(momentum)
        real_update(teacher, student, momentum)

    monkeypatch.setattr(agpnet_model, "ema_update", recording_update)
    model = tiny(epochs=3, batch_size=2, ema_every=4, ema_momentum=0.5)
    log = model.fit(dataset["train"][:6], QUIET)  # 3 batches × 3 epochs = 9 steps
    assert log["steps"] == 9 and len(calls) == log["steps"] // 4 and calls == [0.5, 0.5]  # after steps 4 and 8
    calls.clear()
    tiny(epochs=3, batch_size=2, ema_every=4, mean_teacher=False).fit(dataset["train"][:6], QUIET)
    assert calls == []


# ------------------------------------------------------------------------------- equations


def test_minmax_and_top_ratio_mask_by_hand() -> None:
    values = torch.tensor([[2.0, 4.0, 3.0, 6.0], [1.0, 1.0, 1.0, 1.0]])
    assert minmax_per_sample(values).tolist() == [[0.0, 0.5, 0.25, 1.0], [0.0, 0.0, 0.0, 0.0]]
    scores = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    assert perturbation.top_ratio_mask(scores, 0.5).tolist() == [[[False, True], [True, False]]]
    assert perturbation.top_ratio_mask(scores, 1.0).all() and perturbation.top_ratio_mask(torch.rand(3, 10, 10), 0.6).sum() == 180


def test_losses_and_distances_by_hand() -> None:
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    b = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert perturbation.token_distance(a, b, "cosine")[0].tolist() == pytest.approx([0.0, 1.0])
    assert perturbation.token_distance(a, b, "l2")[0].tolist() == pytest.approx([0.0, math.sqrt(2)])
    # flattened [1, 0, 0, 1] vs [1, 0, 1, 0]: cos = 1/2
    assert perturbation.flat_cosine_loss(a, b).item() == pytest.approx(0.5)


def test_target_is_the_sum_of_individually_layer_normed_taps() -> None:
    taps = [torch.randn(2, 4, 6) * 5 + 3, torch.randn(2, 4, 6)]
    by_hand = sum((t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + 1e-5) for t in taps)
    torch.testing.assert_close(layer_norm_sum(taps), by_hand)


def test_rotate_flip_augmentation_is_32_fold() -> None:
    images = torch.randn(2, 3, 8, 8)
    views = perturbation.rotate_flip_augment(images, 32)
    assert views.shape == (64, 3, 8, 8)
    assert torch.equal(views[:2], images) and torch.equal(views[2:4], images.flip(-1))
    rotated_180 = views[16 * 2:16 * 2 + 2]  # rotation 8 of 16 is 180°
    torch.testing.assert_close(rotated_180, images.flip(-1).flip(-2), atol=1e-5, rtol=0)


def test_feature_perturbation_is_lambda_times_mask_times_noise() -> None:
    model = tiny(image_noise="none", feature_noise_scale=0.5, noise_gamma=2.0)
    images = torch.randn(2, 3, SIZE, SIZE)
    target, inputs = model.perturbed_inputs(images, 1, 4, torch.Generator().manual_seed(7))
    assert len(inputs) == 1
    generator = torch.Generator().manual_seed(7)
    _, prior = model.extractor(images, with_prior=True)
    mask = model.attention_mask(target, prior)
    expected = target + 0.5 * 2.0 * mask.unsqueeze(-1) * torch.randn(target.shape, generator=generator)
    torch.testing.assert_close(inputs[0], expected)
    assert mask.amin(1).tolist() == [0.0, 0.0] and mask.amax(1).tolist() == [1.0, 1.0]


def test_no_noise_gives_the_clean_target_and_image_noise_adds_a_branch() -> None:
    images = torch.randn(2, 3, SIZE, SIZE)
    target, inputs = tiny(feature_noise="none", image_noise="none").perturbed_inputs(images, 1, 4, torch.Generator())
    assert len(inputs) == 1 and torch.equal(inputs[0], target)
    target, inputs = tiny(feature_noise="none", image_noise="random").perturbed_inputs(images, 1, 4, torch.Generator())
    assert len(inputs) == 2 and not torch.allclose(inputs[1], target)


# ------------------------------------------------------------------------------- method face


def test_predict_shapes_and_score_is_max_of_average_pooled_map() -> None:
    model = tiny().eval()
    images = torch.randn(3, 3, SIZE, SIZE)
    pred = model.predict(images, "any")
    assert pred.scores.shape == (3,) and pred.maps.shape == (3, SIZE, SIZE)
    pooled = F.avg_pool2d(pred.maps.unsqueeze(1), 4, stride=1)
    torch.testing.assert_close(pred.scores, pooled.flatten(1).amax(1))
    assert torch.isfinite(pred.maps).all()


def test_checkpoint_holds_decoder_and_teacher_only() -> None:
    model = tiny()
    keys = set(model.trainable_state_dict())
    assert keys and all(k.startswith(("decoder.", "teacher.")) for k in keys)
    assert any(k.startswith("teacher.") for k in keys)
    other = tiny(seed=5)  # another decoder init, the same (tiny, fixed-seed) extractor
    assert not torch.equal(other.decoder.pos_embed, model.decoder.pos_embed)
    other.load_trainable_state_dict(model.trainable_state_dict())
    images = torch.randn(1, 3, SIZE, SIZE)
    torch.testing.assert_close(other.predict(images, "c").maps, model.predict(images, "c").maps)


def _clean_loss(model: AGPNet, images: torch.Tensor) -> float:
    with torch.no_grad():
        return model.training_loss(images, model.epochs, model.epochs, torch.Generator().manual_seed(123)).item()


def _finite_metrics(model: AGPNet, test: list[Sample]) -> None:
    pred = model.predict(load_images(test, model.image_size, model.normalization), test[0].category)
    values = metrics.category_metrics(pred.scores, torch.tensor([s.label for s in test]), pred.maps, load_masks(test, model.image_size))
    assert all(math.isfinite(v) for v in values.values())


@pytest.mark.parametrize("setting", ["multi_class", "one_class"])
def test_fit_lowers_the_loss_and_gives_finite_metrics(setting: str, dataset) -> None:
    model = tiny(setting=setting, epochs=4)
    images = load_images(dataset["train"], SIZE, "imagenet")
    before = _clean_loss(model, images)
    log = model.fit(dataset["train"], QUIET)
    assert len(log["loss"]) == 4 and log["steps"] == 8
    assert _clean_loss(model, images) < before
    _finite_metrics(model, dataset["test"])


@pytest.mark.parametrize("shots", [1, 2, 4])
def test_few_shot_trains_inside_set_references(shots: int, dataset, monkeypatch) -> None:
    model = tiny(setting="few_shot", epochs=2)
    references = load_images(dataset["train"][:shots], SIZE, "imagenet")
    trained_on = []
    real_train = AGPNet.train_on_images

    def recording_train(self, images, *args, **kwargs):
        trained_on.append(len(images))
        return real_train(self, images, *args, **kwargs)

    monkeypatch.setattr(AGPNet, "train_on_images", recording_train)
    before = _clean_loss(model, references)
    model.set_references(references, "stripes")
    assert trained_on == [4 * shots]  # few_shot_folds=4 views of each reference
    assert _clean_loss(model, references) < before
    _finite_metrics(model, dataset["test"])
    first = model.trainable_state_dict()
    model.set_references(references, "stripes")  # each category starts from the same fresh decoder
    assert all(torch.equal(first[k], v) for k, v in model.trainable_state_dict().items())
    with pytest.raises(ValueError, match="set_references"):
        model.fit(dataset["train"])
    with pytest.raises(ValueError, match="few_shot"):
        tiny().set_references(references, "stripes")


def test_max_steps_per_epoch_cuts_every_epoch_to_its_first_batches(dataset) -> None:
    train = dataset["train"][:8]  # two batches of 4 an epoch
    full, cut = tiny(epochs=2).fit(train), tiny(epochs=2, max_steps_per_epoch=1).fit(train)
    assert (full["steps"], len(full["loss"]), cut["steps"], len(cut["loss"])) == (4, 2, 2, 2)
    assert full["loss"] != cut["loss"]


def _interrupt_after_first_epoch(train, monkeypatch) -> None:
    """Run ``train()`` until the snapshot of the first epoch is written (by the shared
    :class:`EpochCheckpoints`), then stop it as a crash would."""
    real_save = EpochCheckpoints.save

    def save_then_stop(self, epoch, *args, **kwargs):
        real_save(self, epoch, *args, **kwargs)
        if epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(EpochCheckpoints, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(EpochCheckpoints, "save", real_save)


@pytest.mark.parametrize(("drop_last", "steps"), [(True, 3), (False, 6)])
def test_resume_after_interruption_equals_an_uninterrupted_run(drop_last: bool, steps: int, dataset, tmp_path: Path, monkeypatch) -> None:
    train = dataset["train"][:6]  # batches of 4 and 2; ViTAD's drop_last (default) drops the 2
    uninterrupted = tiny(epochs=3, drop_last=drop_last)
    uninterrupted.fit(train, RunContext(checkpoint_dir=tmp_path / "full", progress=False))
    cut = RunContext(checkpoint_dir=tmp_path / "cut", progress=False)
    _interrupt_after_first_epoch(lambda: tiny(epochs=3, drop_last=drop_last).fit(train, cut), monkeypatch)
    resumed = tiny(epochs=3, drop_last=drop_last)
    log = resumed.fit(train, cut)
    assert len(log["loss"]) == 3 and log["steps"] == steps
    expected = uninterrupted.trainable_state_dict()
    for key, value in resumed.trainable_state_dict().items():
        torch.testing.assert_close(value, expected[key], atol=1e-6, rtol=0)


def test_few_shot_training_resumes_from_its_checkpoint_dir(dataset, tmp_path: Path, monkeypatch) -> None:
    references = load_images(dataset["train"][:2], SIZE, "imagenet")
    uninterrupted = tiny(setting="few_shot", epochs=3)
    uninterrupted.set_references(references, "stripes")
    context = RunContext(checkpoint_dir=tmp_path)
    _interrupt_after_first_epoch(lambda: tiny(setting="few_shot", epochs=3).set_references(references, "stripes", context), monkeypatch)
    assert [p.name for p in tmp_path.glob("*.pt")] == ["epoch_000.pt"] and EpochCheckpoints(tmp_path).latest()["epoch"] == 0
    resumed = tiny(setting="few_shot", epochs=3)
    resumed.set_references(references, "stripes", context)
    assert [p.name for p in tmp_path.glob("*.pt")] == ["epoch_002.pt"]  # only the newest snapshot is kept
    expected = uninterrupted.trainable_state_dict()
    for key, value in resumed.trainable_state_dict().items():
        torch.testing.assert_close(value, expected[key], atol=1e-6, rtol=0)


def test_resume_refuses_a_checkpoint_of_another_configuration(dataset, tmp_path: Path) -> None:
    train = dataset["train"][:4]
    context = RunContext(checkpoint_dir=tmp_path, progress=False)
    tiny(epochs=2).fit(train, context)
    saved = EpochCheckpoints(tmp_path).latest()
    assert saved["identity"]["config"] == tiny(epochs=2).training_config() and saved["epoch"] == 1
    assert "smoothing_sigma" in tiny().plain_config() and "smoothing_sigma" not in saved["identity"]["config"]
    with pytest.raises(StaleCheckpointError, match=r"another training \(differs: config\.noise_gamma\).*delete"):
        tiny(epochs=2, noise_gamma=2.0).fit(train, context)
    with pytest.raises(StaleCheckpointError, match=r"differs: images"):
        tiny(epochs=2).fit(dataset["train"][:5], context)
    log = tiny(epochs=2, smoothing_sigma=3.0).fit(train, context)  # the same training options resume (nothing left)
    assert log["loss"] == saved["losses"] and log["steps"] == 2  # one step per epoch: the epoch means are the steps'


def test_the_run_context_seed_replaces_the_seed_option(dataset) -> None:
    """The runner's per-seed trainings give the seed in the run context: decoder init, shuffling and noise."""
    by_option, by_context, default = tiny(epochs=1, seed=3), tiny(epochs=1), tiny(epochs=1)
    by_option.fit(dataset["train"][:4], QUIET)
    by_context.fit(dataset["train"][:4], RunContext(seed=3, progress=False))
    default.fit(dataset["train"][:4], QUIET)
    expected = by_option.trainable_state_dict()
    assert all(torch.equal(expected[k], v) for k, v in by_context.trainable_state_dict().items())
    assert not torch.equal(expected["decoder.pos_embed"], default.trainable_state_dict()["decoder.pos_embed"])


def test_training_is_deterministic(dataset) -> None:
    runs = []
    for _ in range(2):
        model = tiny(epochs=1)
        model.fit(dataset["train"][:4], QUIET)
        runs.append(model.predict(load_images(dataset["test"][:2], SIZE, "imagenet"), "stripes").maps)
    assert torch.equal(runs[0], runs[1])


# ------------------------------------------------------------------------------- ablations


@pytest.mark.parametrize("options", [
    {"mask_source": "prior"}, {"mask_source": "teacher"}, {"mean_teacher": False},
    {"feature_noise": "random", "image_noise": "random"}, {"image_noise": "random", "random_image_region": "whole"},
    {"feature_noise_scale": 1.5}, {"distance": "l2"},
    {"taps": (3,), "attention_blocks": (3,)},
])
def test_every_ablation_trains_one_epoch(options: dict, dataset) -> None:
    model = tiny(epochs=1, batch_size=2, **options)  # one full batch of the 2 images (drop_last)
    log = model.fit(dataset["train"][:2], QUIET)
    assert math.isfinite(log["loss"][0])


def test_cnn_backbone_uses_activation_attention_and_projections(dataset) -> None:
    model = tiny(backbone="tiny-resnet", taps=("layer2", "layer3"), decoder_dim=32, decoder_heads=4, epochs=1, batch_size=2)
    assert model.extractor.width == 128 + 256
    assert isinstance(model.decoder.in_proj, nn.Linear) and model.decoder.in_proj.out_features == 32
    images = load_images(dataset["train"][:2], SIZE, "imagenet")
    target, prior = model.extractor(images, with_prior=True)
    assert target.shape == (2, 16, 384) and prior.shape == (2, 16)
    assert math.isfinite(model.fit(dataset["train"][:2], QUIET)["loss"][0])


def test_clip_backbone_prior_and_normalization(dataset) -> None:
    model = tiny(backbone="tiny-clip-b16", decoder_heads=4, epochs=1, batch_size=2)
    assert model.normalization == "clip" and model.extractor.grid_size == 4
    images = load_images(dataset["train"][:2], SIZE, "clip")
    target, prior = model.extractor(images, with_prior=True)
    assert target.shape == (2, 16, 64) and prior.shape == (2, 16) and torch.all(prior > 0)
    assert math.isfinite(model.fit(dataset["train"][:2], QUIET)["loss"][0])


def test_weights_id_and_frozen_forward_of_every_extractor() -> None:
    """What the runner records (``weights_id``) and what speed times (``frozen_forward``) for each backbone family."""
    dino = tiny()
    images = torch.randn(1, 3, SIZE, SIZE)
    assert dino.weights_id == "tiny-dino:random"
    assert torch.equal(dino.frozen_forward(images), dino.extractor.backbone.model.forward_features(images))
    cnn = tiny(backbone="tiny-resnet", taps=("layer3",), decoder_dim=8, decoder_heads=2)
    assert cnn.weights_id.endswith(":random") and set(cnn.frozen_forward(images)) == {"layer4"}
    clip = tiny(backbone="tiny-clip-b16", decoder_heads=4)
    assert clip.weights_id == "tiny-clip-b16:random" and clip.frozen_forward(images).ndim == 2


def test_invalid_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="mask_source"):
        tiny(mask_source="decoder")
    with pytest.raises(ValueError, match="setting"):
        tiny(setting="zero_shot")


def test_whole_image_random_noise_covers_every_pixel() -> None:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.Size((2, 16))
    whole = tiny(image_noise="random", random_image_region="whole")._image_region(None, tokens, 0.6, generator)
    assert whole.shape == (2, SIZE, SIZE) and torch.equal(whole, torch.ones(2, SIZE, SIZE))
    area = tiny(image_noise="random")._image_region(None, tokens, 0.6, generator)
    assert area.sum(dim=(1, 2)).tolist() == [round(0.6 * SIZE * SIZE)] * 2
    with pytest.raises(ValueError, match="random_image_region"):
        tiny(random_image_region="everywhere")


def test_decoder_mlp_ratio_sets_the_parameter_count() -> None:
    dim, tokens, depth = 32, 16, 2
    for ratio in (4.0, 2.0):
        hidden = int(dim * ratio)
        per_block = 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + 2 * dim + (dim * hidden + hidden) + (hidden * dim + dim)
        model = tiny(decoder_dim=dim, decoder_heads=4, decoder_depth=depth, decoder_mlp_ratio=ratio)
        width = model.extractor.width  # tiny-dino is wider than the decoder: linear in/out projections
        assert isinstance(model.decoder.in_proj, nn.Linear) and width != dim
        projections = (width * dim + dim) + (dim * width + width)
        fusion = width * width + width  # ViTAD's Linear(C, C) before the decoder
        assert sum(p.numel() for p in model.decoder.parameters()) == tokens * dim + depth * per_block + projections + fusion


def test_unstated_values_are_read_from_the_code() -> None:
    rows = unstated.unstated_values()
    defaults = inspect.signature(AGPNet.__init__).parameters
    assert {r.tag for r in rows} <= set(unstated.TAGS) and len({r.name for r in rows}) == len(rows)
    for name in unstated.UNSTATED_OPTIONS:
        assert next(r.value for r in rows if r.name == name) == defaults[name].default
    assert next(r.value for r in rows if r.name == "taps (ViT)") == extractor.DEFAULT_VIT_TAPS
    inherited = {r.name: r.value for r in rows if r.tag == "V"}
    # the ViTAD values as spec agpnet.md states them: a changed default fails here, not only in the table
    assert {k: inherited[k] for k in ("image_size", "smoothing_sigma", "score_pool", "weight_decay", "distance")} == {
        "image_size": 256, "smoothing_sigma": 4.0, "score_pool": 16, "weight_decay": 1e-4, "distance": "cosine"}


# ------------------------------------------------------------------------------- demo benchmark


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["multi_class", "one_class", "few_shot"])
def test_demo_profile_trains_on_a_demo_category(setting: str, demo_data: Path) -> None:
    """The demo profile's own schedule on one category of the embedded benchmark lowers the loss."""
    root = demo_data / "demo_a"
    category = demo.categories(root)[0]
    train, test = demo.load(root, category, "train"), demo.load(root, category, "test")
    model = methods.build("agpnet", profile="demo", setting=setting)
    images = load_images(train[:2] if setting == "few_shot" else train, model.image_size, model.normalization)
    before = _clean_loss(model, images)
    if setting == "few_shot":
        model.set_references(images, category)
    else:
        log = model.fit(train, QUIET)
        assert len(log["loss"]) == model.epochs and all(map(math.isfinite, log["loss"]))
    model.eval()
    assert _clean_loss(model, images) < before
    _finite_metrics(model, test)


def test_recorded_configuration_holds_every_option_in_effect() -> None:
    """An option given at its default and one left out record (and check checkpoints) alike; options
    that reach a parent constructor through ``**kwargs`` are resolved there (SPADE -> CNNBaseline)."""
    from sowa_lib.methods import build, options_in_effect

    implicit = build("agpnet", profile="demo").plain_config()
    assert build("agpnet", profile="demo", noise_gamma=1.0).plain_config() == implicit
    assert implicit["noise_gamma"] == 1.0 and options_in_effect(AGPNet, {})["ema_momentum"] == 0.9999
    assert build("agpnet", profile="demo", noise_gamma=2.0).plain_config()["noise_gamma"] == 2.0
    spade = build("spade", profile="demo").config()
    assert spade["top_k"] == 50 and "image_size" in spade and "common" not in spade


# ------------------------------------------------------------------ ViTAD's training details [V]


def test_vitad_behaviours_are_the_defaults_and_tagged_v() -> None:
    rows = {r.name: r for r in unstated.unstated_values()}
    expected = {"fusion": True, "weight_decay_params": "matrices", "grad_clip_norm": 5.0, "drop_last": True, "image_interpolation": "bilinear"}
    assert {name: (rows[name].value, rows[name].tag) for name in expected} == {name: (value, "V") for name, value in expected.items()}
    assert tiny().interpolation == "bilinear" and tiny(image_interpolation="bicubic").interpolation == "bicubic"
    with pytest.raises(ValueError, match="weight_decay_params"):
        tiny(weight_decay_params="norms")


def test_fusion_linear_sits_before_the_decoder() -> None:
    model, plain = tiny(), tiny(fusion=False)
    assert isinstance(model.decoder.fusion, nn.Linear) and isinstance(plain.decoder.fusion, nn.Identity)
    features = torch.randn(2, 16, model.extractor.width)
    with torch.no_grad():
        x = model.decoder.in_proj(model.decoder.fusion(features)) + model.decoder.pos_embed
        for block in model.decoder.blocks:
            x = block(x)
        assert torch.allclose(model.decoder(features), model.decoder.out_proj(x), atol=1e-6)


def test_weight_decay_only_on_matrices_that_are_not_biases() -> None:
    model = tiny()
    decayed, free = model.parameter_groups()
    names = {id(p): n for n, p in model.decoder.named_parameters()}
    assert decayed["weight_decay"] == model.weight_decay and free["weight_decay"] == 0.0
    assert {names[id(p)] for p in decayed["params"]} == {n for n, p in model.decoder.named_parameters() if p.ndim >= 2 and not n.endswith(".bias")}
    assert any(n.endswith("norm1.weight") for n in (names[id(p)] for p in free["params"]))  # LayerNorm weights: 1-D, not decayed
    (everything,) = tiny(weight_decay_params="all").parameter_groups()
    assert len(everything["params"]) == len(list(model.decoder.parameters())) and everything["weight_decay"] == model.weight_decay


def test_drop_last_drops_the_partial_batch_and_refuses_to_train_on_nothing(dataset) -> None:
    generator = torch.Generator().manual_seed(0)
    assert [len(b) for b in shuffled_batches(10, 4, generator, drop_last=True)] == [4, 4]
    assert [len(b) for b in shuffled_batches(10, 4, generator)] == [4, 4, 2]
    with pytest.raises(ValueError, match="drop_last"):
        shuffled_batches(3, 4, generator, drop_last=True)
    with pytest.raises(ValueError, match="drop_last"):
        tiny().fit(dataset["train"][:3], QUIET)  # 3 images, batch_size 4


@pytest.mark.parametrize(("clip", "expected"), [(5.0, [5.0]), (None, [])])
def test_gradients_are_clipped_at_norm_5(dataset, monkeypatch, clip, expected) -> None:
    seen = []
    real = nn.utils.clip_grad_norm_
    monkeypatch.setattr(nn.utils, "clip_grad_norm_", lambda params, max_norm, **kw: seen.append(max_norm) or real(params, max_norm, **kw))
    tiny(epochs=1, grad_clip_norm=clip).fit(dataset["train"][:4], QUIET)
    assert seen == expected


def test_bilinear_resize_matches_pils_bilinear_resize(dataset) -> None:
    """ViTAD's torchvision Resize(bilinear) on a PIL image: PIL's antialiased bilinear, stored as uint8."""
    from sowa_lib.data.transforms import NORMALIZATION, image_to_tensor

    image = (np.random.default_rng(0).random((100, 140, 3)) * 255).astype(np.uint8)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZATION["imagenet"])
    pil = torch.from_numpy(np.array(Image.fromarray(image).resize((SIZE, SIZE), Image.BILINEAR))).permute(2, 0, 1) / 255.0
    ours = image_to_tensor(image, SIZE, "imagenet", "bilinear")
    assert (ours - (pil - mean) / std).abs().max() < 1.5 / 255 / 0.224  # PIL's uint8 rounding, in normalised units
    assert (image_to_tensor(image, SIZE, "imagenet", "bicubic") - (pil - mean) / std).abs().max() > 0.05


def test_learnable_parameters_count_the_decoder_with_its_fusion() -> None:
    options = dict(backbone=TINY_DINO, image_size=SIZE, taps=(0, 1, 2, 3))
    with_fusion, without = unstated.learnable_parameters(**options), unstated.learnable_parameters(fusion=False, **options)
    width = tiny().extractor.width
    assert with_fusion - without == width * width + width
    assert with_fusion == sum(p.numel() for p in tiny().decoder.parameters())
