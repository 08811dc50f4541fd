"""VisA read in its raw release layout through ``split_csv/1cls.csv`` (datasets spec §2.2).

::

    <root>/<category>/Data/Images/{Anomaly,Normal}/*.JPG
    <root>/<category>/Data/Masks/Anomaly/*.png        (class-id masks, binarised > 0 on read)
    <root>/split_csv/{1cls,2cls_fewshot,2cls_highshot}.csv   header: object,split,label,image,mask

Every CLIP-era paper evaluates on the 1cls split (spec §2.5 item 4), the default here. Paths in the
CSV are relative to the VisA root. The split names no defect type, so anomalies get the defect
``"bad"`` (the folder name of spot-diff's ``prepare_data.py``) and normal images ``"good"``.
"""
from __future__ import annotations

import csv
from pathlib import Path

from sowa_lib.data.errors import bad_layout, not_found, require_category, require_split
from sowa_lib.data.sample import Sample

NAME = "visa"
DEFAULT_SPLIT_CSV = "1cls"
CSV_COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}
DEFECTS = ("good", "bad")
VISA_LAYOUT = ("<root>/<category>/Data/Images/{Anomaly,Normal}/*.JPG, <root>/<category>/Data/Masks/Anomaly/*.png, "
               "<root>/split_csv/1cls.csv with columns object,split,label,image,mask")

CATEGORIES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
              "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum")

# 1cls.csv counts computed from the file (spec §2.2 [V]): train normal, test normal, test anomaly.
EXPECTED_COUNTS: dict[str, tuple[int, int, int]] = {
    "candle": (900, 100, 100), "capsules": (542, 60, 100), "cashew": (450, 50, 100),
    "chewinggum": (453, 50, 100), "fryum": (450, 50, 100), "macaroni1": (900, 100, 100),
    "macaroni2": (900, 100, 100), "pcb1": (904, 100, 100), "pcb2": (901, 100, 100),
    "pcb3": (905, 101, 100), "pcb4": (904, 101, 100), "pipe_fryum": (450, 50, 100),
}
COUNTS_VERIFIED = True


def read_split_csv(root: Path, split_csv: str = DEFAULT_SPLIT_CSV) -> list[dict[str, str]]:
    """Rows of ``<root>/split_csv/<split_csv>.csv``, checked for the official header and labels."""
    root = Path(root)
    path = root / "split_csv" / f"{split_csv}.csv"
    if not path.is_file():
        raise not_found(NAME, path, VISA_LAYOUT, root, f"split file {path.name} not found")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise bad_layout(NAME, path, VISA_LAYOUT, root, f"unexpected CSV header {reader.fieldnames}")
        rows = list(reader)
    bad = next((r for r in rows if r["label"] not in LABELS), None)
    if bad is not None:
        raise bad_layout(NAME, path, VISA_LAYOUT, root, f"unknown label {bad['label']!r} for {bad['image']}")
    return rows


def categories(root: Path, split_csv: str = DEFAULT_SPLIT_CSV) -> list[str]:
    """Categories named in the split CSV, sorted."""
    return sorted({row["object"] for row in read_split_csv(root, split_csv)})


def _existing(root: Path, relpath: str, csv_name: str) -> Path:
    path = root / relpath
    if not path.is_file():
        raise not_found(NAME, path, VISA_LAYOUT, root, f"{csv_name}.csv names a file that does not exist")
    return path


def load(root: Path, category: str, split: str, split_csv: str = DEFAULT_SPLIT_CSV) -> list[Sample]:
    """VisA samples of one category for ``split`` of the given split CSV, sorted by image path."""
    root = Path(root)
    require_split(NAME, split)
    rows = read_split_csv(root, split_csv)
    require_category(NAME, category, sorted({r["object"] for r in rows}), root, VISA_LAYOUT)
    samples = []
    for row in rows:
        if row["object"] != category or row["split"] != split:
            continue
        label = LABELS[row["label"]]
        mask = _existing(root, row["mask"], split_csv) if row["mask"] else None
        image = _existing(root, row["image"], split_csv)
        samples.append(Sample(image, mask, label, category, DEFECTS[label], split, NAME, root))
    if not samples:
        raise bad_layout(NAME, root / "split_csv", VISA_LAYOUT, root,
                         f"{split_csv}.csv has no {split} rows for {category!r}")
    return sorted(samples, key=lambda s: s.path)
