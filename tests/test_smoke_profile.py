"""The smoke profile (issue 17): the paper profile with declared differences only, on fabricated data
in the six official layouts that every loader reads."""
from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import pytest

from sowa_lib import data, methods, smoke, tables
from sowa_lib.data.fabricate import SMOKE_TEST_DEFECT, SMOKE_TEST_GOOD, SMOKE_TRAIN, SMOKE_TRAIN_SHADES, fabricate_benchmarks
from sowa_lib.figures import PROFILE_NOTE
from sowa_lib.jobs import Plan, training_key
from sowa_lib.methods import SMOKE_METHOD_OPTIONS, method_profile_options
from sowa_lib.preflight import prepare
from sowa_lib.profiles import REPO_ROOT, SMOKE_DIFFERENCES, get_profile, paper_profile, smoke_profile
from sowa_lib.runs import RunSpec
from sowa_lib.vocabulary import PAPER_DATASETS


def test_smoke_profile_is_the_paper_profile_but_for_its_declared_fields(tmp_path):
    paper, smoke = asdict(paper_profile(tmp_path, tmp_path, "cpu")), asdict(smoke_profile(tmp_path, tmp_path, "cpu"))
    differ = {field for field in paper if paper[field] != smoke[field]}
    assert differ == {"name", "seeds"}
    assert smoke["seeds"] == SMOKE_DIFFERENCES["seeds"] == (0,)


@pytest.mark.parametrize("name", methods.available())
def test_smoke_method_options_are_the_papers_plus_declared_differences(name):
    cls = methods.method_class(name)
    known = methods.options_in_effect(cls, {})
    smoke = method_profile_options(known, cls.profiles, "smoke")
    assert smoke == {k: v for k, v in SMOKE_METHOD_OPTIONS.items() if k in known}
    assert smoke["pretrained"] is None  # random weights of the real architecture, for every method


def test_every_loader_reads_the_fabricated_benchmarks(tmp_path):
    folders = fabricate_benchmarks(tmp_path)
    assert set(folders) == set(PAPER_DATASETS)
    for name, root in folders.items():
        categories = data.categories(name, root)
        assert len(categories) == 2, name
        for category in categories:
            train, test = data.load(name, root, category, "train"), data.load(name, root, category, "test")
            assert sum(s.label == 0 for s in train) == SMOKE_TRAIN, (name, category)
            contents = {s.read_image().tobytes() for s in train if s.label == 0}
            assert len(contents) == SMOKE_TRAIN_SHADES, (name, category)  # few contents, so the cache serves most references
            labels = [s.label for s in test]
            assert labels.count(1) == SMOKE_TEST_DEFECT and labels.count(0) >= SMOKE_TEST_GOOD, (name, category)
            for sample in test:
                assert (sample.mask_path is not None) == bool(sample.label)
                if sample.label:
                    assert sample.read_mask().any()


def test_fabricated_masks_follow_each_benchmarks_own_naming(tmp_path):
    folders = fabricate_benchmarks(tmp_path)
    masks = {name: sorted(str(Path(s.mask_path).relative_to(root)) for c in data.categories(name, root)
                          for s in data.load(name, root, c, "test") if s.mask_path) for name, root in folders.items()}
    assert masks["mvtec"][0] == "bottle/ground_truth/crack/000_mask.png"
    assert masks["visa"][0] == "candle/Data/Masks/Anomaly/000.png"
    assert masks["btad"][0] == "01/ground_truth/ko/0000.png"  # .png masks beside .bmp images
    assert masks["dagm"][0] == "Class1/Test/Label/0002_label.PNG"
    assert set(masks["dtd_synthetic"]) == {"Blotchy_099/ground_truth/bad/000.png", "Woven_001/ground_truth/bad/000_mask.png"}
    assert masks["mvtec3d"][0] == "bagel/test/crack/gt/000.png"
    assert (folders["mvtec3d"] / "bagel" / "test" / "crack" / "xyz" / "000.tiff").is_file()
    assert (folders["visa"] / "split_csv" / "1cls.csv").is_file()


def test_prepare_fabricates_the_smoke_data_and_every_note_says_not_paper_numbers(tmp_path):
    profile = get_profile("smoke", data_root=tmp_path / "smoke", results_dir=tmp_path / "results")
    assert profile.device == "cpu"
    assert {name: len(cats) for name, cats in prepare(profile).items()} == {name: 2 for name in PAPER_DATASETS}
    assert "not paper numbers" in tables.banner("smoke") and "random weights" in tables.banner("smoke")
    assert "not paper numbers" in PROFILE_NOTE["smoke"]


def test_a_plan_given_trained_weights_trains_nothing(tmp_path):
    profile = smoke_profile(tmp_path, tmp_path)
    spec = RunSpec("smoke", "mvtec", "bottle", "april_gan", "zero_shot", 0, 0, "official_weights")
    given = Plan("april_gan", "zero_shot", ("mvtec",), variant="official_weights", overrides={"checkpoint": "april_gan/visa"})
    assert training_key(given, "auxiliary", profile, spec) is None
    assert training_key(Plan("april_gan", "zero_shot", ("mvtec",)), "auxiliary", profile, spec) == ("visa", None, 0)


def test_the_ci_runs_smoke_steps_that_exist_and_unknown_ones_are_refused():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    chosen = re.search(r'smoke-ci SMOKE_ONLY="([^"]+)"', ci).group(1).split()
    names = [step.name for step in smoke.STEPS]
    assert set(chosen) <= set(names) and len(names) == len(set(names))
    assert "april_gan:official_weights" in chosen and "april_gan" not in chosen
    with pytest.raises(SystemExit):
        smoke.main(["--only", "april-gan"])
