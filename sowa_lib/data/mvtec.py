"""MVTec AD in its official layout, and the generic MVTec-style layout reader (datasets spec §2.2).

::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/{good,<defect>}/000.png
    <root>/<category>/ground_truth/<defect>/000_mask.png

:func:`load_mvtec_layout` and :func:`mvtec_layout_categories` read any tree of this shape; the
DTD-Synthetic loader and the demo benchmark reuse them. Images and masks are paired **by name**
(``000.png`` ↔ ``000_mask.png``), not by sorted order as the April-GAN meta.json scripts do
(spec §2.3), and an unpaired file raises :class:`DatasetLayoutError`. So does a defect folder
without its ``ground_truth/<defect>`` folder (a partial copy would otherwise score its anomalies
against all-zero masks), except for the defects a loader lists in ``unmasked_defects``: spec §2.2
says MVTec AD's ``combined`` defect may ship without masks, and those images get all-zero masks
(``mask_path=None``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Collection, Sequence

from sowa_lib.data.errors import bad_layout, not_found, require_category, require_split
from sowa_lib.data.sample import Sample

NAME = "mvtec"
NORMAL_FOLDER = "good"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
MVTEC_MASK_NAMES = ("{stem}_mask",)
MVTEC_UNMASKED_DEFECTS = frozenset({"combined"})  # spec §2.2: "the 'combined' defect class ... no mask"
MVTEC_LAYOUT = ("<root>/<category>/train/good/*.png, <root>/<category>/test/{good,<defect>}/*.png, "
                "<root>/<category>/ground_truth/<defect>/<name>_mask.png")

CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
              "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper")

# Spec §2.2 table [T] (its totals match the IJCV paper): train good, test good, test defective.
EXPECTED_COUNTS: dict[str, tuple[int, int, int]] = {
    "carpet": (280, 28, 89), "grid": (264, 21, 57), "leather": (245, 32, 92), "tile": (230, 33, 84),
    "wood": (247, 19, 60), "bottle": (209, 20, 63), "cable": (224, 58, 92), "capsule": (219, 23, 109),
    "hazelnut": (391, 40, 70), "metal_nut": (220, 22, 93), "pill": (267, 26, 141), "screw": (320, 41, 119),
    "toothbrush": (60, 12, 30), "transistor": (213, 60, 40), "zipper": (240, 32, 119),
}
COUNTS_VERIFIED = True  # [T] counts whose totals cross-check: assert them after download


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; hidden files (``.DS_Store``, ``._x``) skipped."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def pair_masks(images: Sequence[Path], mask_dir: Path, *, mask_names: Sequence[str], dataset: str,
               root: Path, expected: str, every_image: bool = True) -> list[Path | None]:
    """The mask of every image in ``images``, found in ``mask_dir`` by name (None where there is none).

    ``mask_names`` are ``str.format`` patterns of the mask's stem given the image's ``stem``
    (MVTec: ``"{stem}_mask"``; MVTec-3D and BTAD: ``"{stem}"``; DAGM: ``"{stem}_label"``); any
    image suffix is accepted. A mask without an image always raises :class:`DatasetLayoutError`;
    an image without a mask raises too when ``every_image`` (DAGM masks only its defective images).
    """
    masks = {p.stem: p for p in list_images(mask_dir)} if mask_dir.is_dir() else {}
    paired: list[Path | None] = []
    for image in images:
        stem = next((s for s in (n.format(stem=image.stem) for n in mask_names) if s in masks), None)
        paired.append(masks.pop(stem) if stem is not None else None)
    missing = [image.name for image, mask in zip(images, paired) if mask is None]
    if missing and every_image:
        raise bad_layout(dataset, mask_dir, expected, root,
                         f"{len(missing)} image(s) have no mask, e.g. {missing[0]} (looked for "
                         f"{' or '.join(n.format(stem=Path(missing[0]).stem) for n in mask_names)}.*)")
    if masks:
        orphan = sorted(masks.values())[0]
        raise bad_layout(dataset, mask_dir, expected, root,
                         f"{len(masks)} mask(s) have no image, e.g. {orphan.name}")
    return paired


def mvtec_layout_categories(root: Path, *, dataset: str = NAME, expected: str = MVTEC_LAYOUT) -> list[str]:
    """Every folder of ``root`` holding both ``train/`` and ``test/`` is a category (sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise not_found(dataset, root, expected, root)
    found = sorted(p.name for p in root.iterdir() if (p / "train").is_dir() and (p / "test").is_dir())
    if not found:
        raise not_found(dataset, root, expected, root, "no category folder with train/ and test/ found")
    return found


def _defect_samples(folder: Path, category_dir: Path, split: str, category: str, dataset: str, root: Path,
                    normal_folder: str, mask_names: Sequence[str], expected: str,
                    unmasked_defects: Collection[str]) -> list[Sample]:
    images = list_images(folder)
    defect = folder.name
    mask_dir = category_dir / "ground_truth" / defect
    if defect == normal_folder or (defect in unmasked_defects and not mask_dir.is_dir()):
        masks: list[Path | None] = [None] * len(images)
    elif not mask_dir.is_dir() and images:
        raise bad_layout(dataset, mask_dir, expected, root, f"the anomalous images of {split}/{defect}/ have no "
                         f"ground_truth/{defect}/ folder (an incomplete copy? move the "
                         "dataset folder away, then run the fix)")
    else:
        masks = pair_masks(images, mask_dir, mask_names=mask_names, dataset=dataset, root=root, expected=expected)
    label = int(defect != normal_folder)
    return [Sample(image, mask, label, category, defect, split, dataset, root) for image, mask in zip(images, masks)]


def load_mvtec_layout(root: Path, category: str, split: str, dataset: str, *, normal_folder: str = NORMAL_FOLDER,
                      mask_names: Sequence[str] = MVTEC_MASK_NAMES, expected: str = MVTEC_LAYOUT,
                      unmasked_defects: Collection[str] = frozenset()) -> list[Sample]:
    """Samples of ``<root>/<category>/<split>/<defect>/*``, sorted by path.

    Images in ``normal_folder`` (``good``; BTAD: ``ok``) are normal (label 0); any other folder
    name is the defect type (label 1) and needs ``ground_truth/<defect>/`` unless it is one of
    ``unmasked_defects``. ``expected`` is the layout quoted in error messages.
    """
    root = Path(root)
    require_split(dataset, split)
    available = mvtec_layout_categories(root, dataset=dataset, expected=expected)
    require_category(dataset, category, available, root, expected)
    category_dir = root / category
    split_dir = category_dir / split
    samples = [s for folder in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
               for s in _defect_samples(folder, category_dir, split, category, dataset, root,
                                        normal_folder, mask_names, expected, unmasked_defects)]
    if not samples:
        raise bad_layout(dataset, split_dir, expected, root, f"no images in the {split} split of {category!r}")
    return samples


def categories(root: Path) -> list[str]:
    """MVTec AD categories present under ``root`` (any MVTec-style category folder)."""
    return mvtec_layout_categories(root)


def load(root: Path, category: str, split: str) -> list[Sample]:
    """MVTec AD samples of one category and split (``"train"`` or ``"test"``)."""
    return load_mvtec_layout(root, category, split, dataset=NAME, unmasked_defects=MVTEC_UNMASKED_DEFECTS)
