"""DTD-Synthetic (Aota et al., WACV 2023) in its MVTec-like layout (datasets spec §2.2).

::

    <root>/<class>/train/good/*.png
    <root>/<class>/test/{good,<defect>}/*.png
    <root>/<class>/ground_truth/<defect>/<name>_mask.png   (or <name>.png)

The release is a Google Drive folder with no published archive name or hash (spec §2.1 [T]/[X]),
so mask names are accepted with or without the ``_mask`` suffix; they are still paired by name.
"""
from __future__ import annotations

from pathlib import Path

from sowa_lib.data.mvtec import load_mvtec_layout, mvtec_layout_categories
from sowa_lib.data.sample import Sample

NAME = "dtd_synthetic"
MASK_NAMES = ("{stem}_mask", "{stem}")
DTD_LAYOUT = ("<root>/<class>/train/good/*.png, <root>/<class>/test/{good,<defect>}/*.png, "
              "<root>/<class>/ground_truth/<defect>/<name>_mask.png")

# The 12 classes of AnomalyCLIP's generate_dataset_json/DTD.py, in that script's order.
CATEGORIES = ("Woven_001", "Woven_127", "Woven_104", "Stratified_154", "Blotchy_099", "Woven_068",
              "Woven_125", "Marbled_078", "Perforated_037", "Mesh_114", "Fibrous_183", "Matted_069")
EXPECTED_COUNTS: dict[str, tuple[int, int, int]] = {}  # unpublished (spec §2.2 [X])
COUNTS_VERIFIED = False


def categories(root: Path) -> list[str]:
    """Texture classes present under ``root``, sorted."""
    return mvtec_layout_categories(root, dataset=NAME, expected=DTD_LAYOUT)


def load(root: Path, category: str, split: str) -> list[Sample]:
    """DTD-Synthetic samples of one class and split (``"train"`` or ``"test"``), sorted by path."""
    return load_mvtec_layout(root, category, split, dataset=NAME, mask_names=MASK_NAMES, expected=DTD_LAYOUT)
