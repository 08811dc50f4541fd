"""The embedded demo benchmark generator (sowa_lib.data.demo): layout, determinism, masks, reuse."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sowa_lib import data
from sowa_lib.data import demo
from sowa_lib.errors import DatasetLayoutError, DatasetNotFoundError

DEFAULTS = {"n_train": 8, "n_test_good": 6, "n_test_bad": 6}
SMALL = {"image_size": 48, "n_train": 2, "n_test_good": 1, "n_test_bad": 2}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """One default generation, timed from cold source caches in CPU seconds of this process (wall
    time on the shared 2-core machine measures the neighbours' load more than the generator)."""
    root = tmp_path_factory.mktemp("demo")
    demo._source.cache_clear()
    start = time.process_time()
    demo.generate(root, seed=0)
    return root, time.process_time() - start


def test_generation_takes_seconds_and_returns_both_groups(generated):
    root, seconds = generated
    assert seconds < 10.0
    assert demo.generate(root, seed=0) == {"demo_a": root / "demo_a", "demo_b": root / "demo_b"}
    manifest = json.loads((root / demo.MANIFEST_NAME).read_text())
    assert manifest["parameters"] == {"generator_version": demo.GENERATOR_VERSION, "seed": 0, "image_size": 256,
                                      **DEFAULTS}


def test_same_seed_gives_byte_identical_files_in_a_fresh_process(tmp_path):
    """A second process with another string-hash salt writes the same bytes (no hash(), no state).
    Small images keep it fast; every category and defect kind is still rendered."""
    options = {"seed": 0, "image_size": 96, "n_train": 2, "n_test_good": 1, "n_test_bad": 3}
    demo.generate(tmp_path / "here", **options)
    code = f"from sowa_lib.data import demo; demo.generate({str(tmp_path / 'there')!r}, **{options!r})"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, cwd=Path(__file__).parents[1],
                   env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert _files(tmp_path / "here") == _files(tmp_path / "there")


def test_another_seed_gives_other_images(tmp_path):
    first = _files(demo.generate(tmp_path / "s0", seed=0, **SMALL)["demo_a"])
    second = _files(demo.generate(tmp_path / "s1", seed=1, **SMALL)["demo_a"])
    shared = [k for k in first if k in second and k.endswith(".png") and "ground_truth" not in k]
    assert shared and all(first[k] != second[k] for k in shared)


def test_groups_are_disjoint_and_listed_by_the_loader(generated):
    root, _ = generated
    found = {group: data.categories("demo", root / group) for group in demo.GROUPS}
    assert found == {group: sorted(c.name for c in cats) for group, cats in demo.GROUPS.items()}
    assert not set(found["demo_a"]) & set(found["demo_b"])
    sources = [{c.source for c in cats} for cats in demo.GROUPS.values()]
    foreign = {c.source for c in demo._FOREIGN_SOURCES}
    assert not sources[0] & sources[1] and not foreign & (sources[0] | sources[1])


@pytest.mark.parametrize("group", sorted(demo.GROUPS))
def test_counts_per_split_and_half_anomalous(generated, group):
    root, _ = generated
    for category in data.categories("demo", root / group):
        train = data.load("demo", root / group, category, "train")
        test = data.load("demo", root / group, category, "test")
        assert len(train) == DEFAULTS["n_train"] and all(s.label == 0 and s.defect == "good" for s in train)
        assert len(test) == DEFAULTS["n_test_good"] + DEFAULTS["n_test_bad"]
        assert sum(s.label for s in test) == DEFAULTS["n_test_bad"]
        kinds = {s.defect for s in test if s.label}
        assert kinds == set(demo.CATEGORIES[category].defects) and kinds <= set(demo.DEFECTS)


def test_loader_round_trip(generated):
    root, _ = generated
    samples = data.load("demo", root / "demo_b", "cup", split="test")
    assert {s.dataset for s in samples} == {"demo"} and {s.category for s in samples} == {"cup"}
    for sample in samples:
        image, mask = sample.read_image(), sample.read_mask()
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8 and mask.shape == (256, 256)
        assert (sample.mask_path is not None) == bool(sample.label) == bool(mask.any())
        if sample.label:
            assert set(np.unique(_read(sample.mask_path))) == {0, 255}
            assert sample.mask_path.relative_to(sample.root).as_posix() == (
                f"cup/ground_truth/{sample.defect}/{sample.path.stem}_mask.png")


@pytest.mark.parametrize("category", ["brick", "cup"])
def test_pixels_change_exactly_inside_the_mask(generated, category):
    """Files on disk equal the rendering; an anomaly equals its normal-pipeline image outside the
    mask and differs from it on (nearly) every mask pixel."""
    root, _ = generated
    group = next(g for g, cats in demo.GROUPS.items() if category in {c.name for c in cats})
    for item in demo.render_category(category, seed=0):
        on_disk = root / group / category / item.relpath
        np.testing.assert_array_equal(_read(on_disk), item.image)
        clean = demo.normal_image(category, 0, item.split, item.index)
        changed = (item.image != clean).any(axis=-1)
        if item.defect == "good":
            assert not item.mask.any() and not changed.any()
            continue
        mask_file = on_disk.parent.parent.parent / "ground_truth" / item.defect / f"{on_disk.stem}_mask.png"
        np.testing.assert_array_equal(_read(mask_file) > 0, item.mask)
        assert not (changed & ~item.mask).any()
        assert changed[item.mask].mean() > 0.95


def test_normal_images_differ_from_each_other(generated):
    root, _ = generated
    images = [s.read_image() for s in data.load("demo", root / "demo_a", "gravel", "train")]
    assert all(not np.array_equal(a, b) for i, a in enumerate(images) for b in images[i + 1:])


def test_defect_sizes_span_small_and_large(generated):
    root, _ = generated
    areas = [s.read_mask().mean() for group in demo.GROUPS for s in data.load("demo", root / group) if s.label]
    assert min(areas) < 0.005 and max(areas) > 0.05


def test_matching_manifest_is_reused_and_anything_else_regenerated(tmp_path):
    paths = demo.generate(tmp_path, seed=0, **SMALL)
    image = paths["demo_a"] / "brick" / "train" / "good" / "000.png"
    original, stamp = image.read_bytes(), image.stat().st_mtime_ns
    demo.generate(tmp_path, seed=0, **SMALL)
    assert image.stat().st_mtime_ns == stamp

    image.write_bytes(b"damaged")
    demo.generate(tmp_path, seed=0, **SMALL)
    assert image.read_bytes() == original

    demo.generate(tmp_path, seed=0, **{**SMALL, "n_train": 3})
    assert len(data.load("demo", paths["demo_a"], "brick", "train")) == 3



def test_the_files_are_read_again_only_after_one_changed(tmp_path, monkeypatch):
    """Every study step checks the demo against its manifest: unchanged files (path, size, modification
    time) are not read again in this process; a rewrite of the same size is still caught."""
    paths = demo.generate(tmp_path, seed=0, **SMALL)
    image = paths["demo_b"] / "coins" / "test" / "good" / "000.png"
    original, stamp = image.read_bytes(), image.stat().st_mtime_ns
    reads: list[Path] = []
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or read_bytes(self))
    demo.generate(tmp_path, seed=0, **SMALL)
    assert reads == []

    image.write_bytes(bytes(len(original)))
    os.utime(image, ns=(stamp + 10**9, stamp + 10**9))
    demo.generate(tmp_path, seed=0, **SMALL)
    assert image in reads and read_bytes(image) == original

def test_missing_root_says_how_to_generate(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"demo\.generate\(.*make data DATASETS=demo"):
        data.load("demo", tmp_path / "demo_a", "brick")
    with pytest.raises(DatasetNotFoundError, match=f"fix: make data DATASETS=demo DATA_ROOT={tmp_path}$"):
        data.load("demo", tmp_path / "demo" / "demo_a", "brick")  # make data writes DATA_ROOT/demo/demo_a


def test_the_demo_parent_folder_names_its_groups(tmp_path):
    for group in ("demo_a", "demo_b"):
        (tmp_path / "demo" / group).mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match=f"load one of its groups: {tmp_path / 'demo' / 'demo_a'} or "
                                                 f"{tmp_path / 'demo' / 'demo_b'}"):
        data.categories("demo", tmp_path / "demo")
