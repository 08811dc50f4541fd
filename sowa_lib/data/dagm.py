"""DAGM 2007 in the Kaggle layout used by AnomalyCLIP (datasets spec §2.2).

::

    <root>/Class<N>/{Train,Test}/<NNNN>.PNG
    <root>/Class<N>/{Train,Test}/Label/<NNNN>_label.PNG      (+ Labels.txt)

As in AnomalyCLIP's ``generate_dataset_json/DAGM.py``, an image is anomalous **iff** a
``<NNNN>_label.PNG`` exists for it. Train holds anomalous images too; K-shot references are drawn
from its normal images only (``draw_references`` keeps label 0). Splits are asked for as
``"train"``/``"test"`` and read from the capitalised folders. The labels are weak ellipses.
"""
from __future__ import annotations

import re
from pathlib import Path

from sowa_lib.data.errors import bad_layout, not_found, require_category, require_split
from sowa_lib.data.mvtec import list_images, pair_masks
from sowa_lib.data.sample import Sample

NAME = "dagm"
SPLIT_FOLDERS = {"train": "Train", "test": "Test"}
LABEL_FOLDER = "Label"
MASK_NAMES = ("{stem}_label",)
DEFECTS = ("good", "bad")
CLASS_PATTERN = re.compile(r"Class(\d+)")
CATEGORIES = tuple(f"Class{n}" for n in range(1, 11))  # DAGM 2007's ten classes (the papers' mean)
DAGM_LAYOUT = "<root>/Class<N>/{Train,Test}/<NNNN>.PNG, <root>/Class<N>/{Train,Test}/Label/<NNNN>_label.PNG"
EXPECTED_COUNTS: dict[str, tuple[int, int, int]] = {}  # only [M] totals are known (spec §2.2)
COUNTS_VERIFIED = False


def categories(root: Path) -> list[str]:
    """``Class<N>`` folders holding ``Train/`` and ``Test/``, in numeric order (Class10 last)."""
    root = Path(root)
    if not root.is_dir():
        raise not_found(NAME, root, DAGM_LAYOUT, root)
    found = [p.name for p in root.iterdir() if CLASS_PATTERN.fullmatch(p.name)
             and all((p / folder).is_dir() for folder in SPLIT_FOLDERS.values())]
    if not found:
        raise not_found(NAME, root, DAGM_LAYOUT, root, "no Class<N> folder with Train/ and Test/ found")
    return sorted(found, key=lambda name: int(CLASS_PATTERN.fullmatch(name).group(1)))


def load(root: Path, category: str, split: str) -> list[Sample]:
    """DAGM samples of one class and split (``"train"``/``"test"``, or the folder names ``"Train"``/``"Test"``)."""
    split = split.lower()
    root = Path(root)
    require_split(NAME, split)
    require_category(NAME, category, categories(root), root, DAGM_LAYOUT)
    split_dir = root / category / SPLIT_FOLDERS[split]
    images = list_images(split_dir)
    if not images:
        raise bad_layout(NAME, split_dir, DAGM_LAYOUT, root, f"no images in the {split} split of {category!r}")
    masks = pair_masks(images, split_dir / LABEL_FOLDER, mask_names=MASK_NAMES, dataset=NAME, root=root,
                       expected=DAGM_LAYOUT, every_image=False)
    return [Sample(image, mask, int(mask is not None), category, DEFECTS[int(mask is not None)], split, NAME, root)
            for image, mask in zip(images, masks)]
