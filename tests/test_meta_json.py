"""meta.json interop with April-GAN / AnomalyCLIP / ADer / SOWA (datasets spec §2.3)."""
import json

import pytest

from sowa_lib.data.fabricate import dagm_tree, mvtec3d_tree, mvtec_tree, visa_tree
import sowa_lib.data as data
from sowa_lib.data import dagm, mvtec, mvtec3d, visa
from sowa_lib.errors import DatasetLayoutError, DatasetNotFoundError, UnknownCategoryError
from sowa_lib.data.meta_json import load_meta_json, meta_json_categories, write_meta_json


def test_mvtec_round_trip_and_exact_schema(tmp_path):
    root = mvtec_tree(mvtec_tree(tmp_path / "mvtec", "cable", train=1, test={"good": 1, "bent": 1}), "bottle")
    splits = {split: [s for c in mvtec.categories(root) for s in mvtec.load(root, c, split)] for split in ("train", "test")}
    write_meta_json(splits, root / "meta.json")
    for split in ("train", "test"):
        assert load_meta_json(root / "meta.json", root, split, dataset="mvtec") == splits[split]
    assert load_meta_json(root / "meta.json", root, "test", "cable", dataset="mvtec") == mvtec.load(root, "cable", "test")
    meta = json.loads((root / "meta.json").read_text())
    assert list(meta) == ["train", "test"] and list(meta["test"]) == ["bottle", "cable"]
    assert meta["test"]["bottle"][0] == {"img_path": "bottle/test/crack/000.png",
                                         "mask_path": "bottle/ground_truth/crack/000_mask.png",
                                         "cls_name": "bottle", "specie_name": "crack", "anomaly": 1}
    assert meta["train"]["cable"] == [{"img_path": "cable/train/good/000.png", "mask_path": "",
                                       "cls_name": "cable", "specie_name": "good", "anomaly": 0}]
    assert [p.name for p in root.iterdir() if p.is_file()] == ["meta.json"]  # no temp file left behind
    assert meta_json_categories(root / "meta.json", root, dataset="mvtec") == ["bottle", "cable"]


def test_visa_round_trip_and_april_gan_empty_specie_name(tmp_path):
    root = visa_tree(tmp_path / "visa")
    test = visa.load(root, "candle", "test")
    write_meta_json({"test": test}, root / "meta.json")
    assert load_meta_json(root / "meta.json", root, "test", dataset="visa") == test
    # April-GAN's VisA script writes specie_name "" for every row.
    meta = json.loads((root / "meta.json").read_text())
    for record in meta["test"]["candle"]:
        record["specie_name"] = ""
    (root / "meta.json").write_text(json.dumps(meta))
    assert [s.defect for s in load_meta_json(root / "meta.json", root, "test", dataset="visa")] == [s.defect for s in test]


def test_dagm_capitalised_split_keys(tmp_path):
    root = dagm_tree(tmp_path / "dagm", classes=(1,))
    train, test = dagm.load(root, "Class1", "train"), dagm.load(root, "Class1", "test")
    write_meta_json({"Train": train, "Test": test}, root / "meta.json")
    assert list(json.loads((root / "meta.json").read_text())) == ["Train", "Test"]
    loaded = load_meta_json(root / "meta.json", root, "train", dataset="dagm")
    assert loaded == train and {s.split for s in loaded} == {"train"}
    assert [s.label for s in load_meta_json(root / "meta.json", root, "Test", dataset="dagm")] == [0, 1, 0]


def test_ader_validation_key(tmp_path):
    root = mvtec3d_tree(tmp_path / "mvtec3d")
    splits = {split: mvtec3d.load(root, "bagel", split) for split in ("train", "validation", "test")}
    write_meta_json(splits, root / "meta.json")
    assert load_meta_json(root / "meta.json", root, "validation", dataset="mvtec3d") == splits["validation"]
    assert load_meta_json(root / "meta.json", root, "test", dataset="mvtec3d") == splits["test"]


def test_entry_point_reads_a_meta_json_prepared_for_the_reference_repos(tmp_path):
    root = mvtec_tree(mvtec_tree(tmp_path / "mvtec", "cable", train=1, test={"good": 1, "bent": 1}), "bottle")
    splits = {split: data.load("mvtec", root, split=split) for split in ("train", "test")}
    write_meta_json(splits, root / "meta.json")
    (root / "cable" / "test").rename(root / "cable" / "not_the_official_layout")  # only meta.json is read now
    meta = root / "meta.json"
    assert data.categories("mvtec", root, meta_json=meta) == ["bottle", "cable"]
    assert data.load("mvtec", root, meta_json=meta, split="train") == splits["train"]
    assert data.load("mvtec", root, "bottle", meta_json=meta) == [s for s in splits["test"] if s.category == "bottle"]
    assert data.load("mvtec", root, "bottle", "train+test", meta_json=meta) == \
        [s for split in ("train", "test") for s in splits[split] if s.category == "bottle"]
    # a dataset outside the six benchmarks: the name only labels the samples
    assert {s.dataset for s in data.load("mpdd", root, "bottle", meta_json=str(meta))} == {"mpdd"}


def test_entry_point_reads_ader_train_plus_validation_from_meta_json(tmp_path):
    root = mvtec3d_tree(tmp_path / "mvtec3d")
    splits = {split: mvtec3d.load(root, "bagel", split) for split in ("train", "validation", "test")}
    write_meta_json(splits, root / "meta.json")
    assert data.load("mvtec3d", root, split="train+validation", meta_json=root / "meta.json") == \
        data.load("mvtec3d", root, split="train+validation") == splits["train"] + splits["validation"]


def test_errors_name_the_problem(tmp_path):
    root = mvtec_tree(tmp_path / "mvtec")
    meta_path = root / "meta.json"
    with pytest.raises(DatasetNotFoundError, match="meta.json not found"):
        load_meta_json(meta_path, root, "test", dataset="mvtec")
    write_meta_json({"test": mvtec.load(root, "bottle", "test")}, meta_path)
    with pytest.raises(DatasetLayoutError, match="no 'train' split; it has: test"):
        load_meta_json(meta_path, root, "train", dataset="mvtec")
    with pytest.raises(UnknownCategoryError, match=f"available: bottle\n  looked at: {meta_path}\n  expected layout: "):
        load_meta_json(meta_path, root, "test", "cable", dataset="mvtec")
    with pytest.raises(DatasetNotFoundError, match="names a file that does not exist"):
        load_meta_json(meta_path, tmp_path / "elsewhere", "test", dataset="mvtec")
    meta = json.loads(meta_path.read_text())
    del meta["test"]["bottle"][0]["anomaly"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetLayoutError, match="malformed meta.json record"):
        load_meta_json(meta_path, root, "test", dataset="mvtec")
    meta_path.write_text("{not json")
    with pytest.raises(DatasetLayoutError, match="not valid JSON"):
        load_meta_json(meta_path, root, "test", dataset="mvtec")


def test_write_refuses_samples_from_two_roots(tmp_path):
    a, b = mvtec_tree(tmp_path / "a"), mvtec_tree(tmp_path / "b")
    with pytest.raises(ValueError, match="one dataset root"):
        write_meta_json({"test": mvtec.load(a, "bottle", "test") + mvtec.load(b, "bottle", "test")}, tmp_path / "m.json")
