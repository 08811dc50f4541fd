"""Prompt ensembles (spec april_gan_winclip_peers §1.4, §2.2) and text scoring (§2.4 golden values)."""
from __future__ import annotations

import pytest
import torch

from sowa_lib.prompts import (
    APRIL_GAN,
    DEFAULT_CLASS_NAME,
    WINCLIP,
    average_features,
    class_scores,
    class_text_features,
    cosine_similarity,
)


def test_april_gan_ensemble_sizes_and_order():
    normal, abnormal = APRIL_GAN.sentences("metal_nut", False), APRIL_GAN.sentences("metal_nut", True)
    assert (len(APRIL_GAN.templates), len(normal), len(abnormal)) == (35, 245, 175)
    assert normal[0] == "a bad photo of a metal_nut." and normal[34] == "this is one metal_nut in the scene."
    assert normal[35] == "a bad photo of a flawless metal_nut."  # states outer, templates inner
    assert abnormal[35] == "a bad photo of a broken metal_nut."
    assert abnormal[-1] == "this is one metal_nut with damage in the scene."
    assert len(set(APRIL_GAN.templates)) == 35


def test_default_class_name_is_anomalibs_object():
    assert DEFAULT_CLASS_NAME == "object"


def test_winclip_ensemble_matches_anomalib_including_its_duplicate():
    normal, abnormal = WINCLIP.sentences("object", False), WINCLIP.sentences("object", True)
    assert (len(normal), len(abnormal)) == (147, 84)
    assert all("object" in s for s in normal + abnormal)
    assert WINCLIP.templates.count("a jpeg corrupted photo of the {}.") == 2
    assert "a jpeg corrupted photo of a {}." not in WINCLIP.templates
    assert not any("broken" in s for s in abnormal)
    assert normal[0] == "a cropped photo of the object." and abnormal[-1] == "a photo of a object with damage for anomaly detection."


def test_averaging_rules_by_hand():
    features = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    assert torch.allclose(average_features(features, "mean"), torch.tensor([1.5, 3.0]))
    # normalise: (0.6, 0.8), (0, 1) -> mean (0.3, 0.9) -> / sqrt(0.9)
    expected = torch.tensor([0.3, 0.9]) / 0.9**0.5
    assert torch.allclose(average_features(features, "normalize_mean_normalize"), expected)
    with pytest.raises(ValueError):
        average_features(features, "median")


def test_class_text_features_stacks_normal_then_abnormal():
    def encode(sentences):  # abnormal sentences contain one of the abnormal words
        bad = ("damaged", "broken", "with flaw", "with defect", "with damage")
        return torch.tensor([[0.0, 2.0] if any(w in s for w in bad) else [1.0, 0.0] for s in sentences])

    assert torch.allclose(class_text_features(encode, WINCLIP, "bottle"), torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    assert torch.allclose(class_text_features(encode, APRIL_GAN, "bottle"), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_cosine_and_class_scores_golden():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert torch.allclose(cosine_similarity(a, b), torch.tensor([[0.0, 0.7071], [1.0, 0.7071]]), atol=1e-4)
    assert torch.allclose(class_scores(a, b, 1.0), torch.tensor([[0.3302, 0.6698], [0.5727, 0.4273]]), atol=1e-4)


def test_winclip_ensemble_switches():
    from sowa_lib.prompts import winclip_ensemble

    assert winclip_ensemble() == WINCLIP
    fixed = winclip_ensemble("deduplicated", "with_broken", "normalize_mean_normalize")
    normal, abnormal = fixed.sentences("object", False), fixed.sentences("object", True)
    assert (len(normal), len(abnormal)) == (147, 105) and len(set(fixed.templates)) == 21
    assert "a jpeg corrupted photo of a {}." in fixed.templates and abnormal[21] == "a cropped photo of the broken object."
    assert fixed.averaging == "normalize_mean_normalize"
    with pytest.raises(ValueError, match="abnormal_states"):
        winclip_ensemble(abnormal_states="many")
