"""BTAD (BeanTech) in its released layout ``BTech_Dataset_transformed/`` (datasets spec §2.2).

::

    <root>/{01,02,03}/train/ok/*.{bmp,png}
    <root>/{01,02,03}/test/{ok,ko}/*.{bmp,png}
    <root>/{01,02,03}/ground_truth/ko/<name>.png

Products 01 and 03 ship ``.bmp`` images; they are read as they are (anomalib converts them to
``.png`` after download, which changes nothing the loader sees). Masks share the image's stem.
The defect name is the folder name (``ok`` normal, ``ko`` anomalous).
"""
from __future__ import annotations

from pathlib import Path

from sowa_lib.data.mvtec import load_mvtec_layout, mvtec_layout_categories
from sowa_lib.data.sample import Sample

NAME = "btad"
NORMAL_FOLDER = "ok"
MASK_NAMES = ("{stem}",)
BTAD_LAYOUT = ("<root>/{01,02,03}/train/ok/*.{bmp,png}, <root>/{01,02,03}/test/{ok,ko}/*.{bmp,png}, "
               "<root>/{01,02,03}/ground_truth/ko/<name>.png (the archive's BTech_Dataset_transformed/ folder)")
CATEGORIES = ("01", "02", "03")

# Per-product counts are contradictory in the sources (spec §2.2: [T] totals, [M] split), so they
# are only warned about after download. Train ok, test ok, test ko.
EXPECTED_COUNTS: dict[str, tuple[int, int, int]] = {"01": (400, 21, 49), "02": (399, 30, 200), "03": (1000, 400, 41)}
COUNTS_VERIFIED = False


def categories(root: Path) -> list[str]:
    """Products present under ``root`` (``01``, ``02``, ``03``)."""
    return mvtec_layout_categories(root, dataset=NAME, expected=BTAD_LAYOUT)


def load(root: Path, category: str, split: str) -> list[Sample]:
    """BTAD samples of one product and split (``"train"`` or ``"test"``), sorted by path."""
    return load_mvtec_layout(root, category, split, dataset=NAME, normal_folder=NORMAL_FOLDER,
                             mask_names=MASK_NAMES, expected=BTAD_LAYOUT)
