"""The frozen-feature cache (sowa_lib.features, issue #15): cached encodings are bit-identical to
uncached ones (torch.equal, never allclose), each distinct (backbone, image) is encoded once, the key
follows weights, inputs and hooks, memory is dropped per scope, the disk cache survives a new
process-like cache and keeps its cap; and a whole few-shot sweep writes bit-identical metric values
with the cache off, in memory and on disk."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sowa_lib import features
from sowa_lib.backbones.clip import load_clip
from sowa_lib.backbones.cnn import POOLED, STAGES, tiny_resnet
from sowa_lib.backbones.dino import TINY_DINO, load_dino
from sowa_lib.methods.winclip import WinCLIP

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_stats():
    features.STATS.reset()
    yield
    features.STATS.reset()


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _flat(out) -> list[torch.Tensor]:
    """Every tensor of a backbone's output, in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    return [t for v in out if v is not None for t in _flat(v)]


def _identical(a, b) -> bool:
    flat_a, flat_b = _flat(a), _flat(b)
    return len(flat_a) == len(flat_b) and all(torch.equal(x, y) for x, y in zip(flat_a, flat_b))


CLIP = load_clip("tiny-clip", None, image_size=112, quick_gelu=False)
ENCODERS = {
    "clip taps": (lambda x: CLIP.encode_image(x, [0, 2, 3]), 112),
    "dino taps + attention": (lambda x, d=load_dino(TINY_DINO, None, image_size=128): d(x, [1, 3], [3]), 128),
    "cnn stages": (lambda x, c=tiny_resnet(): c(x, ("layer2", "layer3")), 112),
    "winclip windows": (lambda x, w=WinCLIP("tiny-clip-b16", None, image_size=112): w.encode(x), 112),
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
@torch.no_grad()
def test_cached_encoding_is_bit_identical_and_computed_once(name):
    encode, size = ENCODERS[name]
    images = _images(5, size)
    uncached = encode(images)
    cache = features.FeatureCache()
    with features.active(cache) as stats:
        first, second = encode(images), encode(images.clone())
    assert _identical(first, uncached) and _identical(second, uncached)
    assert stats.total_encoded() == 5 and sum(stats.served.values()) == 5
    assert cache.distinct_images() == 5


@torch.no_grad()
def test_cnn_tap_sets_share_one_pass():
    """PatchCore's (layer2, layer3) and SPADE's (layer1-3, pooled) come from one pass of all stages."""
    cnn, images = tiny_resnet(), _images(3, 112)
    uncached = cnn(images, (*STAGES, POOLED))
    with features.active(features.FeatureCache()) as stats:
        patchcore = cnn(images, ("layer2", "layer3"))
        spade = cnn(images, ("layer1", "layer2", "layer3", POOLED))
    assert stats.total_encoded() == 3
    assert all(torch.equal(patchcore[t], uncached[t]) for t in patchcore)
    assert all(torch.equal(spade[t], uncached[t]) for t in spade)


@torch.no_grad()
def test_encoder_seconds_count_every_computation_and_no_served_entry(monkeypatch):
    """``STATS.seconds``: the time of every computation of a frozen encoder, images and prompt lists,
    in a cache's context or outside one (what benchmarks/reproduce_all.py's bound on any cache
    sums), and nothing for an entry the cache serves. A fake clock advances one second per reading."""
    ticks = iter(range(1000))
    monkeypatch.setattr(features, "perf_counter", lambda: float(next(ticks)))
    images = _images(2, 112)
    CLIP.encode_image(images, [3])  # outside any context
    with features.active(None):
        CLIP.encode_image(images, [3])
    with features.active(features.FeatureCache()):
        CLIP.encode_image(images, [3])  # computed and stored
        CLIP.encode_image(images, [3])  # served
        CLIP.encode_text(["a photo of a flawless object"])
        CLIP.encode_text(["a photo of a flawless object"])
    assert dict(features.STATS.seconds) == {"open_clip.VisionTransformer/encode_image": 3.0, "open_clip.CLIP/prompts": 1.0}


def test_a_process_writes_its_encoder_stats_when_asked(tmp_path):
    """With SOWA_FEATURE_STATS set, each process writes its counters at exit; read_stats sums them."""
    script = "from sowa_lib import features; features.STATS.seconds['x'] += 2.5; features.STATS.encoded['x'] += 3"
    env = {**os.environ, features.FEATURE_STATS_ENV: str(tmp_path), "PYTHONPATH": str(REPO)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script], env=env, check=True)
    total = features.read_stats(tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert total.seconds == {"x": 5.0} and total.encoded == {"x": 6} and not total.served


@torch.no_grad()
def test_references_are_encoded_once_per_image_whatever_the_draw():
    """Per-image mode (the runner's references, cached or not): draws [a, b] then [b, c, a] encode
    three images, each equal to its uncached one-image encoding."""
    a, b, c = _images(3, 112).split(1)
    alone = {i: CLIP.encode_image(x, [3]) for i, x in enumerate((a, b, c))}
    with features.active(None, per_image=True):
        uncached = CLIP.encode_image(torch.cat([b, c, a]), [3])
    features.STATS.reset()
    cache = features.FeatureCache()
    with features.active(cache, per_image=True) as stats:
        CLIP.encode_image(torch.cat([a, b]), [3])
        cached = CLIP.encode_image(torch.cat([b, c, a]), [3])
    assert stats.total_encoded() == 3 and sum(stats.served.values()) == 2
    assert _identical(cached, uncached)
    assert torch.equal(cached[1][0][1], alone[2][1][0][0])


@torch.no_grad()
def test_key_follows_weights_inputs_and_hooks():
    clip = load_clip("tiny-clip", None, image_size=112, quick_gelu=False)
    images = _images(2, 112)
    cache = features.FeatureCache()
    with features.active(cache) as stats:
        before = clip.encode_image(images, [3])
        clip.blocks[3].mlp.c_fc.bias.add_(0.5)  # weights changed in place: a new fingerprint
        after = clip.encode_image(images, [3])
        assert stats.total_encoded() == 4 and not torch.equal(before[1][0], after[1][0])
        clip.encode_image(images[:1], [3])  # another batch: another entry
        assert stats.total_encoded() == 5
        seen = []
        hook = clip.blocks[0].register_forward_hook(lambda *_: seen.append(1))
        clip.encode_image(images, [3])  # a hook must see the forward: not served from the cache
        hook.remove()
        assert seen and stats.total_encoded() == 7
    with features.active(cache) as stats, torch.enable_grad():
        clip.encode_image(images, [3])  # autograd recording: never cached nor counted
    assert stats.total_encoded() == 7
    assert torch.equal(after[1][0], clip.encode_image(images, [3])[1][0])


def test_prompt_lists_are_encoded_once_bit_identically_and_never_with_gradients(monkeypatch):
    prompts = ["a photo of a flawless bottle.", "a photo of a damaged bottle.", "a bottle with a crack."]
    calls = []
    compute = CLIP._text_features
    monkeypatch.setattr(CLIP, "_text_features", lambda ids: calls.append(len(ids)) or compute(ids))
    with torch.no_grad():
        uncached = CLIP.encode_text(prompts)
        cache = features.FeatureCache()
        with features.active(cache, per_image=True) as stats:  # a prompt list is one batch, also here
            first, second = CLIP.encode_text(prompts), CLIP.encode_text(prompts, normalize=True)
            other = CLIP.encode_text(prompts[:2])
    assert calls == [3, 3, 2] and stats.total_encoded() == 0 and cache.distinct_images() == 0
    assert torch.equal(first, uncached) and torch.equal(second, torch.nn.functional.normalize(uncached, dim=-1))
    assert other.shape == (2, uncached.shape[1])  # another list: its own entry, computed
    with features.active(cache):
        CLIP.encode_text(prompts)  # autograd on (as in a training step): computed, never served
    assert calls == [3, 3, 2, 3]


@torch.no_grad()
def test_prompt_key_follows_the_text_tower_only():
    clip = load_clip("tiny-clip", None, image_size=112, quick_gelu=False)
    prompts, cache, calls = ["a photo of a bottle."], features.FeatureCache(), []
    compute = clip._text_features
    clip._text_features = lambda ids: calls.append(len(ids)) or compute(ids)
    with features.active(cache):
        first = clip.encode_text(prompts)
        clip.blocks[0].mlp.c_fc.bias.add_(0.5)  # the vision tower changed: the text features did not
        assert torch.equal(clip.encode_text(prompts), first) and calls == [1]
        clip.model.transformer.resblocks[0].mlp.c_fc.bias.add_(0.5)  # the text tower changed
        assert not torch.equal(clip.encode_text(prompts), first) and calls == [1, 1]
        clip.model.text_projection.mul_(2.0)
        clip.encode_text(prompts)
        assert calls == [1, 1, 1]


def test_a_copied_fingerprint_is_hashed_when_asked_from_an_unchanged_source_only():
    """copy_fingerprint hashes nothing; asked, the copy gets its source's fingerprint (memoised there)
    or, once the source has changed since the copy, its own tensors' hash."""
    source = torch.nn.Linear(3, 2)
    expected = features.fingerprint(copy.deepcopy(source))
    served, unserved = copy.deepcopy(source), copy.deepcopy(source)
    features.copy_fingerprint(source, served)
    features.copy_fingerprint(source, unserved)
    assert source not in features._FINGERPRINTS
    assert features.fingerprint(served) == expected and source in features._FINGERPRINTS
    with torch.no_grad():
        source.weight.add_(1.0)
    assert features.fingerprint(unserved) == expected != features.fingerprint(source)


@torch.no_grad()
def test_a_new_scope_drops_the_memory():
    cache, images = features.FeatureCache(), _images(2, 112)
    with features.active(cache):
        cache.enter(("demo_a", "brick"))
        CLIP.encode_image(images, [3])
        assert cache.memory_bytes() > 0
        cache.enter(("demo_a", "brick"))
        assert cache.memory_bytes() > 0
        cache.enter(("demo_a", "grass"))
        assert cache.memory_bytes() == 0
        CLIP.encode_image(images, [3])
    assert features.STATS.total_encoded() == 4


@torch.no_grad()
def test_disk_cache_serves_another_cache_and_keeps_its_cap(tmp_path):
    images = _images(4, 112)
    uncached = CLIP.encode_image(images, [1, 3])
    with features.active(features.FeatureCache(tmp_path)):
        CLIP.encode_image(images, [1, 3])
    files = list(tmp_path.glob("*/*.pt"))
    assert len(files) == 3 and not list(tmp_path.rglob("*.tmp"))  # CLS + 2 taps, renamed into place
    features.STATS.reset()
    with features.active(features.FeatureCache(tmp_path)) as stats:  # as another process would
        from_disk = CLIP.encode_image(images, [1, 3])
    assert stats.total_encoded() == 0 and _identical(from_disk, uncached)
    capped = features.FeatureCache(tmp_path, max_disk_bytes=max(p.stat().st_size for p in files))
    with features.active(capped):
        CLIP.encode_image(images[:2], [1, 3])
    assert capped.disk_bytes() <= capped.max_disk_bytes and len(list(tmp_path.glob("*/*.pt"))) == 1


@torch.no_grad()
def test_the_disk_cache_scans_its_folder_only_when_the_cap_may_be_reached(tmp_path, monkeypatch):
    """One scan for a sweep's writes under the cap (a scan per write was quadratic in the file count),
    then one per write once the cap is reached, which it keeps."""
    cache, scans = features.FeatureCache(tmp_path), []
    trim = cache._trim_to_cap
    monkeypatch.setattr(cache, "_trim_to_cap", lambda: scans.append(1) or trim())
    with features.active(cache):
        for seed in range(5):
            CLIP.encode_image(_images(1, 112, seed), [3])  # two files (CLS, tap) per image
    assert len(scans) == 1 and len(list(tmp_path.glob("*/*.pt"))) == 10
    cache.max_disk_bytes = cache.disk_bytes() + 1
    with features.active(cache):
        CLIP.encode_image(_images(1, 112, seed=5), [3])
    assert len(scans) == 3 and cache.disk_bytes() <= cache.max_disk_bytes


def test_runner_cache_mode_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(features.FEATURE_CACHE_ENV, "off")
    assert features.runner_cache(tmp_path) is None
    monkeypatch.setenv(features.FEATURE_CACHE_ENV, "disk")
    monkeypatch.setenv(features.FEATURE_CACHE_GB_ENV, "0.5")
    cache = features.runner_cache(tmp_path)
    assert cache.directory == tmp_path / "features" and cache.max_disk_bytes == 2**29
    assert features.runner_cache(tmp_path) is cache
    monkeypatch.setenv(features.FEATURE_CACHE_ENV, "sometimes")
    with pytest.raises(ValueError, match="off.*memory.*disk"):
        features.runner_cache(tmp_path)


# ---------------------------------------------------------------------- a sweep, three ways

SWEEP_METHODS = ("winclip", "spade", "padim", "patchcore", "april_gan", "sowa")


def _metric_values(run_dir) -> dict[str, dict]:
    return {str(p.relative_to(run_dir)): json.loads(p.read_text())["metrics"] for p in sorted(run_dir.rglob("*.json"))}


@pytest.mark.slow
def test_sweep_metric_values_are_bit_identical_with_and_without_the_cache(demo_study, monkeypatch):
    """The same few-shot sweep (every method, K ∈ {1, 2}, two seeds, one category; AGPNet K = 1) with
    the cache off, in memory and on disk writes the same metric values, to the last bit; with the
    cache, the frozen encoders ran once per distinct (encoder, image)."""
    from sowa_lib.evaluate import Plan, run_plan

    plans = [Plan(m, "few_shot", ("demo_a",), shots=(1, 2), seeds=(0, 1), categories=("brick",)) for m in SWEEP_METHODS]
    plans.append(Plan("agpnet", "few_shot", ("demo_a",), shots=(1,), seeds=(0,), categories=("brick",)))
    runs_dir = demo_study.run_dir / "runs"
    values, encoded = {}, {}
    for mode in ("off", "memory", "disk"):  # checkpoints trained by the first sweep are loaded by the others
        monkeypatch.setenv(features.FEATURE_CACHE_ENV, mode)
        features.STATS.reset()
        for plan in plans:
            run_plan(plan, demo_study, progress=False)
        values[mode], encoded[mode] = _metric_values(runs_dir), features.STATS.total_encoded()
        shutil.move(runs_dir, runs_dir.with_name(f"runs_{mode}"))
    assert len(values["off"]) == 6 * 4 + 1
    assert values["memory"] == values["off"] and values["disk"] == values["off"]
    distinct = features.runner_cache(demo_study.run_dir).distinct_images()  # the disk sweep's cache
    assert encoded["disk"] == distinct < encoded["off"]
    assert list((demo_study.run_dir / "features").glob("*/*.pt"))
    features._RUNNER_CACHES.clear()  # as the next notebook's kernel: nothing in memory, the files on disk
    features.STATS.reset()
    for plan in plans:
        run_plan(plan, demo_study, progress=False)
    assert _metric_values(runs_dir) == values["off"]
    assert sum(features.STATS.served.values()) > 0 and features.STATS.total_encoded() < encoded["disk"]
