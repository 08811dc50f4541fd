"""Tiny fabricated trees in each benchmark's official on-disk layout (datasets spec §2.2).

Each builder writes a few 8x8 images with PIL under ``root`` and returns ``root``. The counts are
small and fixed so the tests can check them by hand.
"""
from __future__ import annotations

import csv
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


def _format(path: Path) -> str:
    return {".png": "PNG", ".bmp": "BMP", ".jpg": "JPEG", ".jpeg": "JPEG"}[path.suffix.lower()]


def mvtec_tree(root: Path, category: str = "bottle", train: int = 3, test: dict[str, int] | None = None,
               unmasked: tuple[str, ...] = (), mask_suffix: str = "_mask") -> Path:
    """``<category>/train/good``, ``test/{good,<defect>}`` and ``ground_truth/<defect>/NNN_mask.png``.

    Defects listed in ``unmasked`` get no ground_truth folder.
    """
    test = {"good": 2, "crack": 2, "scratch": 1} if test is None else test
    for i in range(train):
        write_image(root / category / "train" / "good" / f"{i:03d}.png", 100 + i)
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


def visa_tree(root: Path, mask_value: int = 3) -> Path:
    """Raw VisA: ``<cls>/Data/Images/{Normal,Anomaly}/*.JPG``, class-id masks, ``split_csv/1cls.csv``."""
    rows = []
    for category, (train, test_normal, test_anomaly) in VISA_ROWS.items():
        for i in range(train + test_normal):
            image = f"{category}/Data/Images/Normal/{i:04d}.JPG"
            write_image(root / image, 90 + i)
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


def btad_tree(root: Path) -> Path:
    """``01`` in .bmp and ``02`` in .png: train/ok 2, test/ok 1, test/ko 2 with masks (same stem)."""
    for product, suffix in (("01", ".bmp"), ("02", ".png")):
        for i in range(2):
            write_image(root / product / "train" / "ok" / f"{i:04d}{suffix}", 70 + i)
            write_image(root / product / "test" / "ko" / f"{i:04d}{suffix}", 20 + i)
            write_mask(root / product / "ground_truth" / "ko" / f"{i:04d}.png")
        write_image(root / product / "test" / "ok" / f"{0:04d}{suffix}", 75)
    return root


def dagm_tree(root: Path, classes: tuple[int, ...] = (1, 2, 10)) -> Path:
    """Kaggle DAGM: per class and split 3 grayscale ``NNNN.PNG``; ``0002`` has a ``Label/0002_label.PNG``."""
    for n in classes:
        for split in ("Train", "Test"):
            folder = root / f"Class{n}" / split
            for i in range(1, 4):
                write_image(folder / f"{i:04d}.PNG", 40 + i, mode="L")
            write_mask(folder / "Label" / "0002_label.PNG")
            (folder / "Label" / "Labels.txt").write_text("1\n0002 1 0002_label.PNG\n")
    return root


def mvtec3d_tree(root: Path, category: str = "bagel") -> Path:
    """``<cls>/{train,validation}/good/rgb`` (2, 1) and ``test/{good,crack}/{rgb,gt}`` (1, 2)."""
    layout = {("train", "good"): 2, ("validation", "good"): 1, ("test", "good"): 1, ("test", "crack"): 2}
    for (split, defect), count in layout.items():
        for i in range(count):
            write_image(root / category / split / defect / "rgb" / f"{i:03d}.png", 60 + i)
            write_mask(root / category / split / defect / "gt" / f"{i:03d}.png", 0 if defect == "good" else 255)
    (root / category / "calibration").mkdir(parents=True, exist_ok=True)
    return root
