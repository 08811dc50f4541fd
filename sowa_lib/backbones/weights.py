"""Where every backbone looks for pretrained weights (when they are missing, the backbones raise
:class:`~sowa_lib.errors.WeightsNotFoundError`)."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["WEIGHTS_DIR_ENV", "downloads_disabled", "weights_cache"]

WEIGHTS_DIR_ENV = "WEIGHTS_DIR"


def weights_cache(kind: str) -> Path | None:
    """``$WEIGHTS_DIR/<kind>`` (``kind``: ``open_clip``, ``timm`` or ``torch``) when ``WEIGHTS_DIR`` is
    set — one shared folder that every cluster worker reads, so workers find the files the driver
    checked and download nothing — else None (each library's own default cache)."""
    root = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(root).expanduser() / kind if root else None


def downloads_disabled() -> bool:
    """Whether downloads are off (every cluster worker runs so): the Hugging Face hub's own switch
    ``HF_HUB_OFFLINE``, honoured here for open_clip URL and torch hub downloads too."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
