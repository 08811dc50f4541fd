"""MVTec 3D-AD, RGB only, as the RGB protocols (ViTAD/ADer) read it (datasets spec §2.2).

::

    <root>/<category>/{train,validation,test}/{good,<defect>}/rgb/<NNN>.png
    <root>/<category>/{train,validation,test}/{good,<defect>}/gt/<NNN>.png
    (xyz/*.tiff and calibration/ are ignored)

Masks share the image's stem. ``good`` images get ``mask_path=None`` (their ``gt`` is all zero).
ADer trains on train + validation: ``sowa_lib.data.load("mvtec3d", root, split="train+validation")``;
the validation samples keep ``split="validation"`` so their origin stays visible.
"""
from __future__ import annotations

from pathlib import Path

from sowa_lib.data.errors import bad_layout, require_category, require_split
from sowa_lib.data.mvtec import NORMAL_FOLDER, list_images, mvtec_layout_categories, pair_masks
from sowa_lib.data.sample import Sample

NAME = "mvtec3d"
SPLITS = ("train", "validation", "test")
MASK_NAMES = ("{stem}",)
MVTEC3D_LAYOUT = ("<root>/<category>/{train,validation,test}/{good,<defect>}/rgb/<NNN>.png, "
                  "<root>/<category>/test/<defect>/gt/<NNN>.png")
CATEGORIES = ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire")

# Spec §2.2 [M] (from memory; verify on disk): train, test good, test defective; validation apart.
EXPECTED_COUNTS: dict[str, tuple[int, int, int]] = {
    "bagel": (244, 22, 88), "cable_gland": (223, 21, 87), "carrot": (286, 27, 132), "cookie": (210, 28, 103),
    "dowel": (288, 26, 104), "foam": (236, 20, 80), "peach": (361, 26, 106), "potato": (300, 22, 92),
    "rope": (298, 32, 69), "tire": (210, 25, 87),
}
EXPECTED_VALIDATION: dict[str, int] = {
    "bagel": 22, "cable_gland": 23, "carrot": 29, "cookie": 22, "dowel": 34,
    "foam": 27, "peach": 42, "potato": 33, "rope": 33, "tire": 29,
}
COUNTS_VERIFIED = False


def categories(root: Path) -> list[str]:
    """Categories present under ``root``, sorted."""
    return mvtec_layout_categories(root, dataset=NAME, expected=MVTEC3D_LAYOUT)


def _split_samples(root: Path, category: str, split: str) -> list[Sample]:
    split_dir = root / category / split
    if not split_dir.is_dir():
        raise bad_layout(NAME, split_dir, MVTEC3D_LAYOUT, root, f"{category!r} has no {split}/ folder")
    samples = []
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        rgb = folder / "rgb"
        if not rgb.is_dir():
            raise bad_layout(NAME, rgb, MVTEC3D_LAYOUT, root, f"{folder.name}/ has no rgb/ folder")
        images = list_images(rgb)
        normal = folder.name == NORMAL_FOLDER
        masks = [None] * len(images) if normal else pair_masks(
            images, folder / "gt", mask_names=MASK_NAMES, dataset=NAME, root=root, expected=MVTEC3D_LAYOUT)
        samples += [Sample(image, mask, int(not normal), category, folder.name, split, NAME, root)
                    for image, mask in zip(images, masks)]
    if not samples:
        raise bad_layout(NAME, split_dir, MVTEC3D_LAYOUT, root, f"no images in the {split} split of {category!r}")
    return samples


def load(root: Path, category: str, split: str) -> list[Sample]:
    """RGB samples of one category and split (``"train"``, ``"validation"`` or ``"test"``)."""
    root = Path(root)
    require_split(NAME, split, SPLITS)
    require_category(NAME, category, categories(root), root, MVTEC3D_LAYOUT)
    return _split_samples(root, category, split)
