"""Variants that change only what a method does after training share the default's training
(``AnomalyMethod.inference_options``, :func:`sowa_lib.jobs.training_plan`): each declared option is
checked here to leave the trained weights bit for bit unchanged, and the runner to train once."""
from __future__ import annotations

import json

import pytest
import torch

from sowa_lib import data, features, methods
from sowa_lib.data import demo
from sowa_lib.evaluate import Plan, run_plan, training_feature_cache
from sowa_lib.jobs import training_plan
from sowa_lib.methods.base import RunContext
from sowa_lib.profiles import get_profile

#: A value other than the default for every inference option a study method declares.
OTHER_VALUE = {"smoothing_sigma": 0.0, "memory_features": "adapted", "image_score": "raw", "reference_replacement": False,
               "distance": "l2", "score_pool": 2}
#: Short trainings of the demo-size methods, mosaics included (AGPNet: the demo's 128-px tiny DINO, two batches).
SHORT = {"sowa": {"epochs": 1, "mosaic_rate": 0.2}, "april_gan": {"epochs": 1, "mosaic_rate": 0.2}, "agpnet": {"epochs": 1, "batch_size": 2}}
QUIET = RunContext(progress=False)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, list]:
    root = tmp_path_factory.mktemp("shared_training")
    demo.generate(root, seed=0, image_size=64, n_train=4, n_test_good=2, n_test_bad=2)
    auxiliary = data.load("demo", root / "demo_b", None, "test")
    category = auxiliary[0].category
    return {"auxiliary": [s for s in auxiliary if s.category == category],
            "target": data.load("demo", root / "demo_a", None, "train")[:4]}


def _trained(name: str, samples: dict[str, list], **overrides) -> dict[str, torch.Tensor]:
    method = methods.build(name, profile="demo", **{**SHORT[name], **overrides})
    method.fit(samples[method.training_data], QUIET)
    return method.trainable_state_dict()


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["sowa", "april_gan", "agpnet"])
def test_inference_options_leave_the_trained_weights_bit_identical(name, samples):
    declared = methods.method_class(name).inference_options
    assert declared and declared <= set(OTHER_VALUE), f"give OTHER_VALUE a value for {sorted(declared - set(OTHER_VALUE))}"
    reference = _trained(name, samples)
    for option in sorted(declared):
        assert methods.configuration(name, "demo")[option] != OTHER_VALUE[option]
        assert _equal(reference, _trained(name, samples, **{option: OTHER_VALUE[option]})), option
    assert not _equal(reference, _trained(name, samples, learning_rate=0.5)), "the check can fail: a training option changes them"


def test_every_trained_method_declares_options_and_untrained_ones_need_none():
    for name in methods.available():
        cls = methods.method_class(name)
        assert bool(cls.inference_options) == (cls.training_data != "none"), name


def test_training_plan_is_the_default_for_inference_only_overrides():
    default = Plan("sowa", "zero_shot", ("mvtec",))
    smoothing = Plan("sowa", "zero_shot", ("mvtec",), variant="no_smoothing", overrides={"smoothing_sigma": 0.0})
    metric = Plan("sowa", "zero_shot", ("mvtec",), variant="aupro=sowa")
    window = Plan("sowa", "zero_shot", ("mvtec",), variant="window=6", overrides={"window": 6})
    both = Plan("sowa", "zero_shot", ("mvtec",), variant="both", overrides={"window": 6, "smoothing_sigma": 0.0})
    assert training_plan(smoothing) == training_plan(metric) == default == training_plan(default)
    assert training_plan(window) is window and training_plan(both) is both


def test_the_runner_trains_once_for_variants_that_differ_in_inference_options_only(demo_study):
    toy = "toy_method:TrainedMeanDistance"

    def plan(variant: str = "default", **overrides) -> Plan:
        return Plan(toy, "one_class", ("demo_a",), categories=("brick",), variant=variant, overrides=overrides)

    run_plan(plan(), demo_study, progress=False)
    run_plan(plan("no_environment", expect_environment={}), demo_study, progress=False)
    run_plan(plan("bigger", image_size=48), demo_study, progress=False)
    folder = demo_study.run_dir / "checkpoints" / toy
    assert sorted(p.name for p in folder.iterdir()) == ["bigger", "default"]
    records = {variant: json.loads(next((demo_study.run_dir / "runs" / toy / variant).rglob("*.json")).read_text())
               for variant in ("no_environment", "bigger")}
    assert records["no_environment"]["training"] == {"loaded": str(folder / "default" / "demo_a-brick_seed0.pt")}
    assert records["bigger"]["training"] == {"loaded": str(folder / "bigger" / "demo_a-brick_seed0.pt")}


def test_sowa_trainings_meet_their_batches_once_through_the_disk_cache(samples, tmp_path):
    """SOWA ``caches_training_encodings``: a second training on the same data and seed (an ablation
    variant) is served every frozen batch, and the weights are those of an uncached training."""
    uncached = _trained("sowa", samples)
    cache = features.FeatureCache(tmp_path).disk_only()
    features.STATS.reset()
    with features.active(cache) as stats:
        first = _trained("sowa", samples)
        encoded = stats.total_encoded()
        second = _trained("sowa", samples, smoothing_sigma=0.0)
    assert encoded > 0 and stats.total_encoded() == encoded and sum(stats.served.values()) == encoded
    assert cache.memory_bytes() == 0 and cache.disk_bytes() > 0  # a training set is kept on disk only
    assert _equal(uncached, first) and _equal(uncached, second)


def test_only_declaring_methods_train_through_the_cache_and_only_on_disk(monkeypatch, tmp_path):
    profile = get_profile("demo", results_dir=tmp_path)
    sowa, april_gan = methods.build("sowa", profile="demo"), methods.build("april_gan", profile="demo")
    for mode, method, expect_cache in (("disk", sowa, True), ("disk", april_gan, False), ("memory", sowa, False)):
        monkeypatch.setenv(features.FEATURE_CACHE_ENV, mode)
        with training_feature_cache(method, profile):
            context = features._CONTEXT
            assert (context is not None) == expect_cache, (mode, method.name)
            assert context is None or (context.cache.directory == tmp_path / "demo" / "features" and not context.cache.in_memory)
