"""The study's names are defined once (sowa_lib.vocabulary) and every registry agrees with them."""
from __future__ import annotations

from sowa_lib import figures, methods, vocabulary


def test_the_method_registry_holds_the_vocabulary_s_methods() -> None:
    assert methods.available() == sorted(vocabulary.METHODS)


def test_every_name_has_its_words() -> None:
    assert set(vocabulary.METHOD_LABELS) == set(vocabulary.METHODS)
    assert set(vocabulary.DATASET_LABELS) == set(vocabulary.CLAIM_DATASETS)
    assert set(vocabulary.METRIC_LABELS) == set(vocabulary.CLAIM_METRICS)
    assert set(vocabulary.METRIC_HEADS) == set(vocabulary.CLAIM_METRICS)
    assert set(vocabulary.SETTING_LABELS) == set(vocabulary.RUN_SETTINGS) - {"efficiency"}
    assert set(vocabulary.METHODS) <= set(figures.METHOD_COLORS)
