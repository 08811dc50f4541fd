import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from sowa_lib import methods
from sowa_lib.backbones.cnn import TappedCNN, _resnet_stages, tiny_resnet
from sowa_lib.data.transforms import NORMALIZATION, image_to_tensor, mask_to_tensor
from sowa_lib.methods.padim import PaDiM
from sowa_lib.methods.patchcore import PatchCore, adaptive_pool_matrix

SIZE = 64
BASELINES = ("spade", "padim", "patchcore")
VARIANTS = [("spade", {}), ("spade", {"pyramid": "per_layer"}), ("padim", {}), ("patchcore", {}), ("patchcore", {"image_score": "max"})]


def build(name: str, **overrides) -> methods.AnomalyMethod:
    return methods.build(name, profile="demo", image_size=SIZE, **overrides)


def normalise(raw: torch.Tensor) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION["imagenet"])
    return (raw - mean) / std


def striped_images(n: int, seed: int) -> torch.Tensor:
    """Normal images: the same diagonal stripes with small per-image noise, RGB in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    stripes = 0.5 + 0.3 * torch.sin((xx + yy) * 2 * math.pi / 8)
    return (stripes.expand(n, 3, SIZE, SIZE) + 0.02 * torch.randn(n, 3, SIZE, SIZE, generator=g)).clamp(0, 1)


def with_defect(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[36:50, 12:26] = True
    out = raw.clone()
    out[:, 0][:, mask], out[:, 1][:, mask], out[:, 2][:, mask] = 1.0, 0.1, 0.1
    return out, mask


@pytest.mark.parametrize("name,options", VARIANTS)
def test_defect_scores_higher_than_clean_and_peaks_on_it(name, options):
    method = build(name, **options)
    method.set_references(normalise(striped_images(2, seed=0)), "stripes")
    clean = striped_images(1, seed=1)
    defect, mask = with_defect(striped_images(1, seed=1))
    pred = method.predict(normalise(torch.cat([clean, defect])), "stripes")
    assert pred.maps.shape == (2, SIZE, SIZE) and pred.scores.shape == (2,)
    assert pred.scores[1] > pred.scores[0]
    assert pred.maps[1][mask].mean() > 2 * pred.maps[1][~mask].mean()
    peak = divmod(int(pred.maps[1].argmax()), SIZE)
    assert mask[peak]


@pytest.mark.parametrize("name,options", VARIANTS)
def test_predictions_are_deterministic_across_builds(name, options):
    refs, queries = normalise(striped_images(3, seed=2)), normalise(striped_images(2, seed=3))
    runs = []
    for _ in range(2):
        method = build(name, **options)
        method.set_references(refs, "c")
        runs.append(method.predict(queries, "c"))
    assert torch.equal(runs[0].scores, runs[1].scores) and torch.equal(runs[0].maps, runs[1].maps)


@pytest.mark.parametrize("name", BASELINES)
def test_zero_shot_is_refused_and_predict_needs_references(name):
    method = build(name)
    with pytest.raises(RuntimeError, match="set_references"):
        method.predict(torch.zeros(1, 3, SIZE, SIZE), "c")
    with pytest.raises(ValueError, match="K >= 1"):
        method.set_references(torch.zeros(0, 3, SIZE, SIZE), "c")


@pytest.mark.parametrize("name", BASELINES)
def test_method_face(name):
    method = build(name)
    assert method.normalization == "imagenet" and method.training_data == "none"
    assert method.trainable_state_dict() == {}
    assert method.config()["backbone"] == "tiny-resnet" and method.config()["image_size"] == SIZE
    paper = methods.method_class(name).profiles.get("paper", {})
    assert paper == {}  # paper profile = constructor defaults: WRN-50-2 IMAGENET1K_V1 at 256 px


def test_spade_image_score_is_mean_distance_to_the_top_k_pooled_references():
    method = build("spade", top_k=2)
    refs, query = normalise(striped_images(3, seed=4)), normalise(striped_images(1, seed=5))
    method.set_references(refs, "c")
    pooled = lambda x: method.backbone(x, ("pooled",))["pooled"].flatten(1)
    with torch.no_grad():
        distances = torch.cdist(pooled(query), pooled(refs))[0]
        expected = distances.sort().values[:2].mean()
    torch.testing.assert_close(method.predict(query, "c").scores[0], expected, rtol=1e-4, atol=1e-5)


# PaDiM ------------------------------------------------------------------------------------------


def test_padim_covariance_matches_numpy_and_is_symmetric_positive_definite():
    method = build("padim", n_features=20)
    refs = normalise(striped_images(3, seed=6))
    method.set_references(refs, "c")
    cov = method.covariance()
    assert cov.shape == (16 * 16, 20, 20)
    torch.testing.assert_close(cov, cov.transpose(1, 2))
    assert torch.linalg.eigvalsh(cov).min() >= 0.01 * (1 - 1e-6)
    embedding = method.embed(refs)[0].numpy()  # [K, P, d]
    position = 37
    expected = np.cov(embedding[:, position, :], rowvar=False) + 0.01 * np.eye(20)
    np.testing.assert_allclose(cov[position].numpy(), expected, rtol=1e-8, atol=1e-10)


def test_padim_woodbury_mahalanobis_equals_the_explicit_inverse():
    method = build("padim", n_features=20)
    method.set_references(normalise(striped_images(4, seed=7)), "c")
    embedding = method.embed(normalise(striped_images(1, seed=8)))[0]
    residual = embedding[0] - method.mean  # [P, d]
    explicit = torch.einsum("pd,pde,pe->p", residual, torch.linalg.inv(method.covariance()), residual).sqrt()
    torch.testing.assert_close(method.mahalanobis(embedding)[0], explicit, rtol=1e-7, atol=1e-9)


def test_padim_single_reference_uses_epsilon_identity():
    method = build("padim", n_features=10)
    refs = normalise(striped_images(1, seed=9))
    method.set_references(refs, "c")
    torch.testing.assert_close(method.covariance(), 0.01 * torch.eye(10, dtype=torch.float64).expand(16 * 16, 10, 10))
    query = normalise(striped_images(1, seed=10))
    euclid = (method.embed(query)[0] - method.embed(refs)[0]).norm(dim=-1) / math.sqrt(0.01)
    torch.testing.assert_close(method.mahalanobis(method.embed(query)[0]), euclid)


def test_padim_selects_dimensions_like_the_reference_code():
    method = build("padim")  # tiny-resnet layer1-3: 64 + 128 + 256 = 448 channels, d = 100
    assert method.selected.tolist() == random.Random(1024).sample(range(448), 100)
    with pytest.raises(ValueError, match="n_features"):
        build("padim", n_features=449)


# PatchCore --------------------------------------------------------------------------------------


def reference_patchcore_features(backbone, images: torch.Tensor) -> torch.Tensor:
    """patchcore-inspection's pipeline written literally: unfold 3×3, upsample the unfolded layer3,
    adaptive-average-pool each patch to 1024, stack the layers, adaptive-pool to 1024."""
    feats = backbone(images, ("layer2", "layer3"))
    h, w = feats["layer2"].shape[-2:]
    per_layer = []
    for layer in ("layer2", "layer3"):
        x = feats[layer]
        b, c, hl, wl = x.shape
        patches = F.unfold(x, kernel_size=3, padding=1).reshape(b, c * 9, hl, wl)
        patches = F.interpolate(patches, size=(h, w), mode="bilinear", align_corners=False)
        rows = patches.permute(0, 2, 3, 1).reshape(-1, 1, c * 9)
        per_layer.append(F.adaptive_avg_pool1d(rows, 1024)[:, 0])
    stacked = torch.stack(per_layer, dim=1).reshape(len(per_layer[0]), 1, -1)
    return F.adaptive_avg_pool1d(stacked, 1024)[:, 0].reshape(len(images), h, w, 1024)


def test_patchcore_features_equal_the_reference_unfold_pipeline():
    method = build("patchcore")
    images = normalise(striped_images(2, seed=11))
    features, grid = method.patch_features(images)
    assert grid == (8, 8)
    with torch.no_grad():
        torch.testing.assert_close(features, reference_patchcore_features(method.backbone, images), rtol=1e-4, atol=1e-5)


def test_adaptive_pool_matrix_averages_overlapping_windows():
    # 6 -> 4: windows [0,2), [1,3), [3,5), [4,6) as torch's adaptive pooling defines them
    expected = torch.tensor([[0.5, 0.5, 0, 0, 0, 0], [0, 0.5, 0.5, 0, 0, 0], [0, 0, 0, 0.5, 0.5, 0], [0, 0, 0, 0, 0.5, 0.5]])
    torch.testing.assert_close(adaptive_pool_matrix(6, 4), expected)
    for in_dim, out_dim in ((4608, 1024), (1152, 1024), (7, 3), (3, 5)):
        x = torch.randn(2, 1, in_dim, generator=torch.Generator().manual_seed(in_dim))
        torch.testing.assert_close(x[:, 0] @ adaptive_pool_matrix(in_dim, out_dim).T, F.adaptive_avg_pool1d(x, out_dim)[:, 0])


def test_patchcore_reweighting_follows_equation_7_on_a_hand_computed_bank():
    method = build("patchcore", num_neighbors=3)
    method.bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [10.0, 10.0]])
    rows = torch.tensor([[[0.0, 0.0], [0.0, -3.0]]])  # patch 2 is the most anomalous: s* = 3, m* = bank[0]
    patch_scores, nearest = torch.tensor([[0.0, 3.0]]), torch.tensor([[0, 0]])
    # N_b(m*) = bank[0], bank[1], bank[2]; distances from (0,-3): 3, sqrt(10), 5
    d = torch.tensor([3.0, math.sqrt(10.0), 5.0])
    expected = (1 - torch.exp(d[0]) / torch.exp(d).sum()) * 3.0
    torch.testing.assert_close(method.reweighted_scores(rows, patch_scores, nearest), expected.reshape(1))


def test_patchcore_max_image_score_is_the_largest_patch_distance():
    method = build("patchcore", image_score="max")
    method.set_references(normalise(striped_images(2, seed=12)), "c")
    query = normalise(with_defect(striped_images(1, seed=13))[0])
    features, _ = method.patch_features(query)
    expected = torch.cdist(features.reshape(-1, 1024), method.bank).min(dim=1).values.max()
    torch.testing.assert_close(method.predict(query, "c").scores[0], expected, rtol=1e-4, atol=1e-5)


def test_patchcore_keeps_every_patch_up_to_four_shots_then_subsamples():
    few = build("patchcore")
    few.set_references(normalise(striped_images(4, seed=14)), "c")
    assert few.bank.shape == (4 * 64, 1024)
    many = build("patchcore", coreset_ratio=0.1)
    many.set_references(normalise(striped_images(5, seed=15)), "c")
    assert many.bank.shape == (32, 1024)


# Demo data end to end ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", BASELINES)
def test_demo_profile_on_demo_images_gives_finite_metrics(name):
    from sowa_lib import metrics
    from sowa_lib.data import demo

    method = methods.build(name, profile="demo")
    size, category = method.image_size, "brick"
    refs = torch.stack([image_to_tensor(demo.normal_image(category, 0, "train", i), size, "imagenet") for i in range(2)])
    good = [(demo.normal_image(category, 0, "test", i), np.zeros((256, 256), bool)) for i in range(2)]
    bad = [demo.anomalous_image(category, 0, 2 + i, i)[:2] for i in range(2)]
    images = torch.stack([image_to_tensor(img, size, "imagenet") for img, _ in good + bad])
    masks = torch.stack([mask_to_tensor(mask, size) for _, mask in good + bad])
    method.set_references(refs, category)
    pred = method.finalize_category(method.predict(images, category))
    assert pred.maps.shape == (4, size, size)
    values = metrics.category_metrics(pred.scores, torch.tensor([0, 0, 1, 1]), pred.maps, masks)
    assert all(np.isfinite(v) for v in values.values())


@pytest.mark.parametrize("name", BASELINES)
def test_weights_id_names_the_backbone_weights_actually_loaded(name):
    """V1 vs V2 of WRN-50-2 give different numbers (spec §4.4 item 8): ``weights_id`` says which."""
    assert build(name).weights_id == "tiny-resnet(seed=0):random"
    stand_in = torchvision.models.resnet18()  # WRN-50-2's taps, without its 270 MB of weights
    v2 = TappedCNN(_resnet_stages(stand_in), arch="wide_resnet50_2", weights="IMAGENET1K_V2")
    options = {"n_features": 10} if name == "padim" else {}
    assert methods.build(name, backbone=v2, image_size=SIZE, **options).weights_id == "wide_resnet50_2:IMAGENET1K_V2"


@pytest.mark.parametrize("name", BASELINES)
def test_frozen_forward_is_the_cnn_through_its_last_stage(name):
    method, images = build(name), normalise(striped_images(2, seed=16))
    out = method.frozen_forward(images)
    assert list(out) == ["layer4"] and torch.equal(out["layer4"], method.backbone(images, ("layer4",))["layer4"])


def test_padim_and_patchcore_accept_a_backbone_object():
    backbone = tiny_resnet(seed=3)
    assert PaDiM(backbone=backbone, n_features=10).backbone is backbone
    assert PatchCore(backbone=backbone).backbone is backbone
