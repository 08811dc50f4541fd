"""Tiny fabricated trees in each benchmark's official on-disk layout (datasets spec §2.2).

Each builder writes a few 8x8 images with PIL under ``root`` and returns ``root``. The default
counts are small and fixed so the loader tests can check them by hand; :func:`fabricate_benchmarks`
builds all six benchmarks with two categories each for the ``smoke`` profile (DESIGN.md, "Profiles"),
masks in each benchmark's own naming and encoding (MVTec ``_mask.png`` 0/255, VisA class ids,
BTAD ``.png`` masks for ``.bmp`` images, DAGM ``Label/<NNNN>_label.PNG``, MVTec-3D ``gt/`` beside
``rgb/`` and ``xyz/``).
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 8


def write_image(path: Path, value: int = 128, mode: str = "RGB") -> Path:
    """A flat ``SIDE`` x ``SIDE`` image; the format follows the suffix (.png, .bmp, .JPG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": (SIDE, SIDE, 3), "L": (SIDE, SIDE)}[mode]
    Image.fromarray(np.full(channels, value, dtype=np.uint8), mode).save(path, format=_format(path))
    return path


def write_mask(path: Path, value: int = 255) -> Path:
    """A mask whose top-left 2x2 corner holds ``value`` (255, or a VisA class id) and the rest 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
    mask[:2, :2] = value
    Image.fromarray(mask, "L").save(path, format=_format(path))
    return path


def shade(base: int, index: int, shades: int | None = None) -> int:
    """Grey level of a folder's ``index``-th image: ``base + index``, or cycling through ``shades``
    levels (the smoke's train images: few distinct contents, many files)."""
    return base + (index if shades is None else index % shades)


def _format(path: Path) -> str:
    return {".png": "PNG", ".bmp": "BMP", ".jpg": "JPEG", ".jpeg": "JPEG"}[path.suffix.lower()]


def mvtec_tree(root: Path, category: str = "bottle", train: int = 3, test: dict[str, int] | None = None,
               unmasked: tuple[str, ...] = (), mask_suffix: str = "_mask", shades: int | None = None) -> Path:
    """``<category>/train/good``, ``test/{good,<defect>}`` and ``ground_truth/<defect>/NNN_mask.png``.

    Defects listed in ``unmasked`` get no ground_truth folder; ``shades``: see :func:`shade`.
    """
    test = {"good": 2, "crack": 2, "scratch": 1} if test is None else test
    for i in range(train):
        write_image(root / category / "train" / "good" / f"{i:03d}.png", shade(100, i, shades))
    for defect, count in test.items():
        for i in range(count):
            write_image(root / category / "test" / defect / f"{i:03d}.png", 50 + i)
            if defect != "good" and defect not in unmasked:
                write_mask(root / category / "ground_truth" / defect / f"{i:03d}{mask_suffix}.png")
    return root


VISA_ROWS = {  # category -> (train normal, test normal, test anomaly)
    "candle": (3, 2, 2),
    "pcb1": (2, 1, 1),
}


def visa_tree(root: Path, mask_value: int = 3, rows_by_category: dict[str, tuple[int, int, int]] | None = None,
              shades: int | None = None) -> Path:
    """Raw VisA: ``<cls>/Data/Images/{Normal,Anomaly}/*.JPG``, class-id masks, ``split_csv/1cls.csv``;
    ``rows_by_category`` (default :data:`VISA_ROWS`): category -> (train normal, test normal, test anomaly)."""
    rows = []
    for category, (train, test_normal, test_anomaly) in (rows_by_category or VISA_ROWS).items():
        for i in range(train + test_normal):
            image = f"{category}/Data/Images/Normal/{i:04d}.JPG"
            write_image(root / image, shade(90, i, shades))
            rows.append((category, "train" if i < train else "test", "normal", image, ""))
        for i in range(test_anomaly):
            image, mask = f"{category}/Data/Images/Anomaly/{i:03d}.JPG", f"{category}/Data/Masks/Anomaly/{i:03d}.png"
            write_image(root / image, 30 + i)
            write_mask(root / mask, mask_value)
            rows.append((category, "test", "anomaly", image, mask))
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("object", "split", "label", "image", "mask"))
        writer.writerows(rows)
    return root


def btad_tree(root: Path, train: int = 2, test_ok: int = 1, test_ko: int = 2, shades: int | None = None) -> Path:
    """``01`` in .bmp and ``02`` in .png: train/ok 2, test/ok 1, test/ko 2 with masks (same stem)."""
    for product, suffix in (("01", ".bmp"), ("02", ".png")):
        for i in range(train):
            write_image(root / product / "train" / "ok" / f"{i:04d}{suffix}", shade(70, i, shades))
        for i in range(test_ko):
            write_image(root / product / "test" / "ko" / f"{i:04d}{suffix}", 20 + i)
            write_mask(root / product / "ground_truth" / "ko" / f"{i:04d}.png")
        for i in range(test_ok):
            write_image(root / product / "test" / "ok" / f"{i:04d}{suffix}", 75 + i)
    return root


def dagm_tree(root: Path, classes: tuple[int, ...] = (1, 2, 10), train: int = 3, test: int = 3, shades: int | None = None) -> Path:
    """Kaggle DAGM: per class ``train``/``test`` grayscale ``NNNN.PNG`` in Train/Test (at least 2);
    ``0002`` of each split has a ``Label/0002_label.PNG``."""
    for n in classes:
        for split, count in (("Train", train), ("Test", test)):
            folder = root / f"Class{n}" / split
            for i in range(1, count + 1):
                write_image(folder / f"{i:04d}.PNG", shade(40, i, shades), mode="L")
            write_mask(folder / "Label" / "0002_label.PNG")
            (folder / "Label" / "Labels.txt").write_text("1\n0002 1 0002_label.PNG\n")
    return root


def mvtec3d_tree(root: Path, category: str = "bagel", layout: dict[tuple[str, str], int] | None = None,
                 shades: int | None = None) -> Path:
    """``<cls>/{train,validation}/good/{rgb,gt,xyz}`` (2, 1) and ``test/{good,crack}/{rgb,gt,xyz}`` (1, 2):
    8-bit RGB, 0/255 ``gt`` and a float32 3-channel ``xyz`` TIFF per image, as the release has them."""
    layout = layout or {("train", "good"): 2, ("validation", "good"): 1, ("test", "good"): 1, ("test", "crack"): 2}
    for (split, defect), count in layout.items():
        for i in range(count):
            write_image(root / category / split / defect / "rgb" / f"{i:03d}.png", shade(60, i, shades))
            write_mask(root / category / split / defect / "gt" / f"{i:03d}.png", 0 if defect == "good" else 255)
            write_xyz(root / category / split / defect / "xyz" / f"{i:03d}.tiff")
    (root / category / "calibration").mkdir(parents=True, exist_ok=True)
    return root


def write_xyz(path: Path) -> Path:
    """An organized point cloud as MVTec 3D-AD stores it: ``SIDE`` x ``SIDE`` x 3 float32 TIFF (metres)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    points = np.zeros((SIDE, SIDE, 3), dtype=np.float32)
    points[..., 2] = 0.5
    write_float_tiff(path, points)
    return path


def write_float_tiff(path: Path, array: np.ndarray) -> None:
    """A multi-channel float32 TIFF written with PIL alone (one ``F`` page per channel)."""
    pages = [Image.fromarray(np.ascontiguousarray(array[..., c]), "F") for c in range(array.shape[-1])]
    pages[0].save(path, format="TIFF", save_all=True, append_images=pages[1:])


#: What :func:`fabricate_benchmarks` writes per category: normal train images — one full batch of
#: AGPNet's paper batch size (32), since its loader drops a last partial batch as ViTAD's does, which
#: also covers K = 4 references drawn without replacement — and one normal and one anomalous test image.
SMOKE_TRAIN, SMOKE_TEST_GOOD, SMOKE_TEST_DEFECT = 32, 1, 1
#: Distinct contents among a category's train images (:func:`shade`). The frozen-feature cache keys
#: an image by its content, so the K-shot references of every K, method and category then cost at most
#: this many encoder passes per backbone: the smoke's hours go to the paths that differ, not to
#: encoding flat images that differ in one grey level. Every file is still read, drawn and preprocessed.
SMOKE_TRAIN_SHADES = 2


def fabricate_benchmarks(root: Path) -> dict[str, Path]:
    """The six benchmarks in their official layouts under ``root/<id>`` with two categories each
    (the smoke profile's data; tiny flat images and corner masks, nothing to learn from).

    Idempotent: a benchmark whose folder exists is left as it is. Returns ``{id: folder}``.
    """
    train, good, defect, shades = SMOKE_TRAIN, SMOKE_TEST_GOOD, SMOKE_TEST_DEFECT, SMOKE_TRAIN_SHADES
    builders = {
        "mvtec": lambda r: [mvtec_tree(r, c, train, {"good": good, "crack": defect}, shades=shades) for c in ("bottle", "cable")],
        "visa": lambda r: visa_tree(r, 1, {c: (train, good, defect) for c in ("candle", "pcb1")}, shades=shades),
        "btad": lambda r: btad_tree(r, train, good, defect, shades=shades),
        # DAGM: 0002 of each split is the anomalous image, so train holds `train` normal images
        "dagm": lambda r: dagm_tree(r, (1, 2), train=train + 1, test=good + defect, shades=shades),
        "dtd_synthetic": lambda r: [mvtec_tree(r, c, train, {"good": good, "bad": defect}, mask_suffix=suffix, shades=shades)
                                    for c, suffix in (("Woven_001", "_mask"), ("Blotchy_099", ""))],
        "mvtec3d": lambda r: [mvtec3d_tree(r, c, {("train", "good"): train, ("validation", "good"): 1, ("test", "good"): good,
                                                  ("test", "crack"): defect}, shades=shades) for c in ("bagel", "cable_gland")],
    }
    folders = {}
    for name, build in builders.items():
        folder = Path(root) / name
        if not folder.is_dir():
            staging = folder.with_name(f".{name}.partial")
            shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
            build(staging)
            staging.rename(folder)
        folders[name] = folder
    return folders
