"""Frozen feature extractors shared by the methods (DESIGN.md: ``sowa_lib/backbones/``)."""
from sowa_lib.backbones.clip import PRETRAINED, TINY_CONFIGS, ClipBackbone, load_clip

__all__ = ["PRETRAINED", "TINY_CONFIGS", "ClipBackbone", "load_clip"]
