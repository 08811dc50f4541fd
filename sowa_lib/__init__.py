"""sowa-repro: a reproducibility study of CLIP-era zero-/few-shot industrial anomaly detection.

``__version__`` is the one place the package version lives (``pyproject.toml`` reads it). It is part of
every run's and checkpoint's reuse key (:mod:`sowa_lib.fingerprint`): bump it with every release and
whenever a change alters what the library computes, so that stored runs made before are recomputed.
"""
__version__ = "0.3.1"
