"""The six benchmark loaders on tiny fabricated trees in their official layouts (spec §2.2)."""

import os

import numpy as np
import pytest

import sowa_lib.data as data
from sowa_lib.data.fabricate import btad_tree, dagm_tree, mvtec3d_tree, mvtec_tree, visa_tree, write_image, write_mask
from sowa_lib.data import btad, dagm, dtd_synthetic, mvtec, mvtec3d, visa
from sowa_lib.errors import CorruptImageError, DatasetError, DatasetLayoutError, DatasetNotFoundError, UnknownCategoryError
from sowa_lib.data.references import draw_references
from sowa_lib.data import sample as sample_module

OPEN = sample_module._open

CORNER = np.zeros((8, 8), dtype=bool)
CORNER[:2, :2] = True


def _summary(samples):
    return [(s.relpath, s.label, s.defect, s.mask_path.relative_to(s.root).as_posix() if s.mask_path else None)
            for s in samples]


# --- MVTec AD and the shared MVTec-style reader -------------------------------------------------

def test_mvtec_counts_labels_defects_and_name_pairing(tmp_path):
    root = mvtec_tree(tmp_path / "mvtec")
    train, test = mvtec.load(root, "bottle", "train"), mvtec.load(root, "bottle", "test")
    assert _summary(train) == [(f"bottle/train/good/{i:03d}.png", 0, "good", None) for i in range(3)]
    assert _summary(test) == [
        ("bottle/test/crack/000.png", 1, "crack", "bottle/ground_truth/crack/000_mask.png"),
        ("bottle/test/crack/001.png", 1, "crack", "bottle/ground_truth/crack/001_mask.png"),
        ("bottle/test/good/000.png", 0, "good", None),
        ("bottle/test/good/001.png", 0, "good", None),
        ("bottle/test/scratch/000.png", 1, "scratch", "bottle/ground_truth/scratch/000_mask.png"),
    ]
    assert {(s.dataset, s.category, s.split, s.root) for s in test} == {("mvtec", "bottle", "test", root)}
    assert np.array_equal(test[0].read_mask(), CORNER)
    assert not test[2].read_mask().any() and test[2].read_mask().shape == (8, 8)
    assert test[0].read_image().shape == (8, 8, 3)


def test_mvtec_entry_point_lists_and_loads_every_category(tmp_path):
    root = mvtec_tree(mvtec_tree(tmp_path / "mvtec", "cable", train=1, test={"good": 1}), "bottle")
    assert data.categories("mvtec", root) == ["bottle", "cable"]
    every = data.load("mvtec", root, split="train")
    assert [s.category for s in every] == ["bottle"] * 3 + ["cable"]
    assert data.load("mvtec", root, "cable") == mvtec.load(root, "cable", "test")


def test_mvtec_pairs_by_name_not_by_sorted_order(tmp_path):
    root = mvtec_tree(tmp_path / "mvtec", test={"crack": 2})
    # Sorted-order pairing (April-GAN's meta.json scripts) would silently give 001.png this mask.
    (root / "bottle/ground_truth/crack/001_mask.png").rename(root / "bottle/ground_truth/crack/007_mask.png")
    with pytest.raises(DatasetLayoutError, match=r"have no mask, e\.g\. 001\.png"):
        mvtec.load(root, "bottle", "test")
    write_image(root / "bottle/test/crack/001.png")
    (root / "bottle/ground_truth/crack/007_mask.png").rename(root / "bottle/ground_truth/crack/001_mask.png")
    write_mask(root / "bottle/ground_truth/crack/009_mask.png")
    with pytest.raises(DatasetLayoutError, match=r"have no image, e\.g\. 009_mask\.png"):
        mvtec.load(root, "bottle", "test")


def test_mvtec_combined_defect_without_ground_truth_folder_gets_all_zero_masks(tmp_path):
    # spec §2.2: MVTec AD's "combined" defect may ship without masks; it is the one exemption.
    root = mvtec_tree(tmp_path / "mvtec", test={"good": 1, "combined": 2}, unmasked=("combined",))
    combined = [s for s in mvtec.load(root, "bottle", "test") if s.defect == "combined"]
    assert [(s.label, s.mask_path) for s in combined] == [(1, None), (1, None)]
    assert not combined[0].read_mask().any()


@pytest.mark.parametrize("name, defect", [("mvtec", "crack"), ("dtd_synthetic", "combined")])
def test_anomalies_without_ground_truth_folder_are_a_layout_error(tmp_path, name, defect):
    root = mvtec_tree(tmp_path / name, test={"good": 1, defect: 2}, unmasked=(defect,))
    with pytest.raises(DatasetLayoutError) as info:
        data.load(name, root, "bottle")
    message = str(info.value)
    assert f"test/{defect}/ have no ground_truth/{defect}/ folder" in message
    assert str(root / "bottle" / "ground_truth" / defect) in message and "expected layout:" in message
    assert f"make data DATASETS={name} DATA_ROOT={tmp_path}" in message
    assert len(data.load(name, root, "bottle", "train")) == 3  # the train split needs no masks


def test_btad_ko_without_ground_truth_folder_is_a_layout_error(tmp_path):
    root = btad_tree(tmp_path / "btad")
    (root / "02/ground_truth/ko").rename(root / "02/ground_truth/ko_old")
    with pytest.raises(DatasetLayoutError, match="no ground_truth/ko/ folder"):
        btad.load(root, "02", "test")
    assert len(btad.load(root, "01", "test")) == 3


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    root = mvtec_tree(tmp_path / "mvtec", train=2)
    (root / "bottle/train/good/.DS_Store").write_text("x")
    (root / "bottle/train/good/notes.txt").write_text("x")
    (root / "license.txt").write_text("x")
    assert len(mvtec.load(root, "bottle", "train")) == 2


def test_unknown_category_names_the_available_ones_the_layout_and_the_fix(tmp_path):
    root = mvtec_tree(tmp_path / "mvtec")
    with pytest.raises(UnknownCategoryError) as info:
        mvtec.load(root, "carpet", "test")
    assert str(info.value) == (f"mvtec: unknown category 'carpet'; available: bottle\n  looked at: {root}\n"
                               f"  expected layout: {mvtec.MVTEC_LAYOUT}\n"
                               f"  fix: make data DATASETS=mvtec DATA_ROOT={tmp_path}")
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownCategoryError, match=r"available: Class1(.|\n)*expected layout: <root>/Class<N>"):
        dagm.load(dagm_tree(tmp_path / "dagm", classes=(1,)), "Class7", "test")
    with pytest.raises(ValueError, match="unknown split"):
        mvtec.load(root, "bottle", "val")


def test_fix_command_for_a_root_not_named_after_the_dataset(tmp_path):
    # make data writes DATA_ROOT/mvtec; it cannot fill a folder called MVTec_AD, so it says where to load from.
    with pytest.raises(DatasetNotFoundError) as info:
        mvtec.categories(tmp_path / "MVTec_AD")
    fix = f"fix: make data DATASETS=mvtec DATA_ROOT={tmp_path}, then load from {tmp_path / 'mvtec'}"
    assert str(info.value).endswith(fix)


def test_file_removed_after_loading_is_a_not_found_error_naming_it(tmp_path):
    root = mvtec_tree(tmp_path / "mvtec")
    samples = mvtec.load(root, "bottle", "test")
    good = next(s for s in samples if s.mask_path is None)
    for path in (samples[0].path, good.path, samples[1].mask_path):
        path.unlink()
    for read in (samples[0].read_image, good.read_mask, samples[1].read_mask):  # read_mask of a good image reads its size
        with pytest.raises(DatasetNotFoundError) as info:
            read()
        assert "file not found" in str(info.value) and "cannot decode" not in str(info.value)
    assert f"looked at: {samples[1].mask_path}" in str(info.value) and f"DATA_ROOT={tmp_path}" in str(info.value)


def test_corrupt_image_raises_naming_the_file(tmp_path):
    root = mvtec_tree(tmp_path / "mvtec")
    broken = root / "bottle/test/crack/001.png"
    broken.write_bytes(b"\x89PNG not really")
    sample = next(s for s in mvtec.load(root, "bottle", "test") if s.path == broken)
    with pytest.raises(CorruptImageError, match="001.png"):
        sample.read_image()



def test_a_file_is_decoded_once_until_it_is_rewritten(tmp_path, monkeypatch):
    """Reads after the first come from the process's decoded files, each an independent copy; a
    rewritten file is decoded again; a mask of a normal image reads only the image's header."""
    root = mvtec_tree(tmp_path / "mvtec")
    anomalous, good = (s for s in mvtec.load(root, "bottle", "test") if s.defect in ("crack", "good") and s.path.stem == "000")
    decoded = []
    monkeypatch.setattr(sample_module, "_open", lambda path, *rest: decoded.append(path) or OPEN(path, *rest))
    first = anomalous.read_image()
    first[:] = 0
    again = anomalous.read_image()
    assert decoded == [anomalous.path] and again.any()
    assert np.array_equal(anomalous.read_mask(), CORNER) and np.array_equal(anomalous.read_mask(), CORNER)
    assert not good.read_mask().any()
    assert decoded == [anomalous.path, anomalous.mask_path]

    write_image(anomalous.path, 7)
    os.utime(anomalous.path, ns=(anomalous.path.stat().st_mtime_ns + 10**9,) * 2)
    assert (anomalous.read_image() == 7).all() and decoded[-1] == anomalous.path


def test_decoded_files_keep_at_most_their_byte_cap():
    arrays = {name: np.zeros(100, dtype=np.uint8) for name in "abc"}
    kept = sample_module._DecodedFiles(max_bytes=250)
    for name, array in arrays.items():
        kept._keep((name,), array)
    assert kept.bytes == 200 and list(kept._arrays) == [("b",), ("c",)]

@pytest.mark.parametrize("name", ["mvtec", "visa", "btad", "dagm", "dtd_synthetic", "mvtec3d"])
def test_missing_dataset_raises_one_clear_error(tmp_path, name):
    root = tmp_path / name
    with pytest.raises(DatasetNotFoundError) as info:
        data.categories(name, root)
    message = str(info.value)
    assert message.startswith(f"{name}:") and str(root) in message and "expected layout:" in message
    assert f"make data DATASETS={name} DATA_ROOT={tmp_path}" in message
    root.mkdir()
    (root / "stray").mkdir()
    with pytest.raises(DatasetError, match=f"DATASETS={name}"):  # present but empty is not an empty run
        data.load(name, root)


# --- VisA ---------------------------------------------------------------------------------------

def test_visa_split_from_csv_and_class_id_masks_binarised(tmp_path):
    root = visa_tree(tmp_path / "visa", mask_value=3)
    assert visa.categories(root) == ["candle", "pcb1"]
    train, test = visa.load(root, "candle", "train"), visa.load(root, "candle", "test")
    assert _summary(train) == [(f"candle/Data/Images/Normal/{i:04d}.JPG", 0, "good", None) for i in range(3)]
    assert _summary(test) == [
        ("candle/Data/Images/Anomaly/000.JPG", 1, "bad", "candle/Data/Masks/Anomaly/000.png"),
        ("candle/Data/Images/Anomaly/001.JPG", 1, "bad", "candle/Data/Masks/Anomaly/001.png"),
        ("candle/Data/Images/Normal/0003.JPG", 0, "good", None),
        ("candle/Data/Images/Normal/0004.JPG", 0, "good", None),
    ]
    assert np.array_equal(test[0].read_mask(), CORNER)  # class id 3 -> True
    assert [len(visa.load(root, "pcb1", s)) for s in ("train", "test")] == [2, 2]


def test_visa_csv_problems_are_layout_errors(tmp_path):
    root = visa_tree(tmp_path / "visa")
    (root / "candle/Data/Masks/Anomaly/001.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="1cls.csv names a file that does not exist"):
        visa.load(root, "candle", "test")
    assert len(visa.load(root, "candle", "train")) == 3  # the other split is still readable
    csv_path = root / "split_csv/1cls.csv"
    csv_path.write_text(csv_path.read_text().replace("object,split", "cls,split", 1))
    with pytest.raises(DatasetLayoutError, match="unexpected CSV header"):
        visa.categories(root)


# --- BTAD ---------------------------------------------------------------------------------------

def test_btad_reads_bmp_and_png_and_pairs_masks_across_suffixes(tmp_path):
    root = btad_tree(tmp_path / "btad")
    assert btad.categories(root) == ["01", "02"]
    test01 = btad.load(root, "01", "test")
    assert _summary(test01) == [
        ("01/test/ko/0000.bmp", 1, "ko", "01/ground_truth/ko/0000.png"),
        ("01/test/ko/0001.bmp", 1, "ko", "01/ground_truth/ko/0001.png"),
        ("01/test/ok/0000.bmp", 0, "ok", None),
    ]
    assert test01[0].read_image().shape == (8, 8, 3) and np.array_equal(test01[0].read_mask(), CORNER)
    assert [s.relpath for s in btad.load(root, "02", "train")] == ["02/train/ok/0000.png", "02/train/ok/0001.png"]


# --- DAGM ---------------------------------------------------------------------------------------

def test_dagm_anomalous_iff_label_exists_and_numeric_class_order(tmp_path):
    root = dagm_tree(tmp_path / "dagm")
    assert dagm.categories(root) == ["Class1", "Class2", "Class10"]
    train = dagm.load(root, "Class10", "train")
    assert _summary(train) == [
        ("Class10/Train/0001.PNG", 0, "good", None),
        ("Class10/Train/0002.PNG", 1, "bad", "Class10/Train/Label/0002_label.PNG"),
        ("Class10/Train/0003.PNG", 0, "good", None),
    ]
    assert train[0].read_image().shape == (8, 8, 3)  # grayscale replicated
    assert [s.split for s in dagm.load(root, "Class1", "test")] == ["test"] * 3
    assert dagm.load(root, "Class1", "Test") == dagm.load(root, "Class1", "test")  # the folder's spelling works too
    for seed in range(5):  # K-shot references come from normal images only
        assert {s.label for s in draw_references(train, 2, seed)} == {0}


def test_dagm_orphan_label_is_a_layout_error(tmp_path):
    root = dagm_tree(tmp_path / "dagm", classes=(3,))
    write_mask(root / "Class3/Test/Label/0042_label.PNG")
    with pytest.raises(DatasetLayoutError, match="0042_label.PNG"):
        dagm.load(root, "Class3", "test")


# --- DTD-Synthetic --------------------------------------------------------------------------------

def test_dtd_synthetic_reads_the_mvtec_like_layout(tmp_path):
    root = mvtec_tree(tmp_path / "dtd", "Woven_001", test={"good": 1, "bad": 2}, mask_suffix="")
    mvtec_tree(root, "Blotchy_099", train=1, test={"bad": 1})
    assert dtd_synthetic.categories(root) == ["Blotchy_099", "Woven_001"]
    test = dtd_synthetic.load(root, "Woven_001", "test")
    assert _summary(test)[:1] == [("Woven_001/test/bad/000.png", 1, "bad", "Woven_001/ground_truth/bad/000.png")]
    assert [s.dataset for s in test] == ["dtd_synthetic"] * 3
    assert set(dtd_synthetic.CATEGORIES) >= {"Woven_001", "Blotchy_099"} and len(dtd_synthetic.CATEGORIES) == 12


# --- MVTec 3D-AD ---------------------------------------------------------------------------------

def test_mvtec3d_rgb_and_gt_with_optional_validation(tmp_path):
    root = mvtec3d_tree(tmp_path / "mvtec3d")
    assert mvtec3d.categories(root) == ["bagel"]
    assert _summary(mvtec3d.load(root, "bagel", "train")) == [
        (f"bagel/train/good/rgb/{i:03d}.png", 0, "good", None) for i in range(2)]
    validation = mvtec3d.load(root, "bagel", "validation")
    assert _summary(validation) == [("bagel/validation/good/rgb/000.png", 0, "good", None)]
    test = mvtec3d.load(root, "bagel", "test")
    assert _summary(test) == [
        ("bagel/test/crack/rgb/000.png", 1, "crack", "bagel/test/crack/gt/000.png"),
        ("bagel/test/crack/rgb/001.png", 1, "crack", "bagel/test/crack/gt/001.png"),
        ("bagel/test/good/rgb/000.png", 0, "good", None),
    ]
    assert np.array_equal(test[1].read_mask(), CORNER)


def test_mvtec3d_train_plus_validation_through_the_entry_point(tmp_path):
    # ADer trains on train + validation (spec §2.2); the samples keep the split they come from.
    root = mvtec3d_tree(mvtec3d_tree(tmp_path / "mvtec3d", "bagel"), "tire")
    ader_train = data.load("mvtec3d", root, "bagel", "train+validation")
    assert [(s.relpath, s.split) for s in ader_train] == [
        ("bagel/train/good/rgb/000.png", "train"), ("bagel/train/good/rgb/001.png", "train"),
        ("bagel/validation/good/rgb/000.png", "validation")]
    every = data.load("mvtec3d", root, split="train+validation")
    assert every == ader_train + data.load("mvtec3d", root, "tire", "train+validation") and len(every) == 6
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        data.load("mvtec", mvtec_tree(tmp_path / "mvtec"), "bottle", "train+validation")


def test_mvtec3d_missing_rgb_or_gt_is_a_layout_error(tmp_path):
    root = mvtec3d_tree(tmp_path / "mvtec3d")
    (root / "bagel/test/crack/gt/001.png").unlink()
    with pytest.raises(DatasetLayoutError, match="001.png"):
        mvtec3d.load(root, "bagel", "test")
    (root / "bagel/train/good/rgb").rename(root / "bagel/train/good/RGB_images")
    with pytest.raises(DatasetLayoutError, match="no rgb/ folder"):
        mvtec3d.load(root, "bagel", "train")
