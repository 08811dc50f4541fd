"""The one record every dataset loader yields (DESIGN.md, "Flow")."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sowa_lib.data.errors import fix_command
from sowa_lib.errors import CorruptImageError, DatasetNotFoundError


def _open(path: Path, dataset: str, root: Path) -> Image.Image:
    """The decoded image; a vanished file is a :class:`DatasetNotFoundError`, an undecodable one a
    :class:`CorruptImageError`, each naming the file."""
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError as err:
        raise DatasetNotFoundError(f"{dataset}: file not found (it was listed when the dataset was loaded; "
                                   f"moved or deleted since?)\n  looked at: {path}\n"
                                   f"  fix: {fix_command(dataset, root)}") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise CorruptImageError(f"cannot decode image file {path}: {err}") from err
    return image


@dataclass(frozen=True)
class Sample:
    """One image of a benchmark, with where its mask lives.

    ``label`` is 1 for anomalous and 0 for normal. ``mask_path`` is None when the
    benchmark ships no mask for this image (normal images, or MVTec's few unmasked
    defects); :meth:`read_mask` then returns an all-zero mask of the image's size.
    ``relpath`` is the image path relative to the dataset root, the key used in
    meta.json files and in the recorded K-shot reference lists.
    """

    path: Path
    mask_path: Path | None
    label: int
    category: str
    defect: str
    split: str
    dataset: str
    root: Path

    @property
    def relpath(self) -> str:
        return self.path.relative_to(self.root).as_posix()

    def read_image(self) -> np.ndarray:
        """RGB uint8 array [H, W, 3] (grayscale images are replicated to 3 channels)."""
        return np.array(_open(self.path, self.dataset, self.root).convert("RGB"))

    def read_mask(self) -> np.ndarray:
        """Boolean mask [H, W], binarised ``> 0`` (VisA masks hold class ids)."""
        if self.mask_path is None:
            width, height = _open(self.path, self.dataset, self.root).size
            return np.zeros((height, width), dtype=bool)
        return np.array(_open(self.mask_path, self.dataset, self.root).convert("L")) > 0
