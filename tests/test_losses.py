"""Focal and Dice losses against hand-computed values (spec april_gan_winclip_peers §1.7)."""
from __future__ import annotations

import math

import torch

from sowa_lib.losses import dice_loss, focal_loss


def test_focal_loss_by_hand():
    # two pixels: abnormal prob 0.8 on a defect, 0.3 on a normal pixel
    probs = torch.tensor([[[[0.2, 0.7]], [[0.8, 0.3]]]])  # [1, 2, 1, 2]
    masks = torch.tensor([[[1.0, 0.0]]])
    def term(p_true):  # clamped one-hot: p_true * (1 - 1e-5) + p_other * 1e-5 + 1e-5
        pt = p_true * (1 - 1e-5) + (1 - p_true) * 1e-5 + 1e-5
        return -((1 - pt) ** 2) * math.log(pt)
    expected = (term(0.8) + term(0.7)) / 2
    assert abs(focal_loss(probs, masks).item() - expected) < 1e-7


def test_focal_loss_is_small_when_confident_and_right():
    masks = torch.zeros(1, 4, 4)
    masks[0, :2] = 1
    right = torch.stack([1 - masks, masks], dim=1) * 0.98 + 0.01
    wrong = 1 - right
    assert focal_loss(right, masks) < 1e-3 < focal_loss(wrong, masks)


def test_dice_loss_by_hand():
    p = torch.tensor([[[0.5, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    g = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    first = (2 * 1.5 + 1) / (1.5 + 2 + 1)
    second = (0 + 1) / (0 + 0 + 1)  # empty mask, empty prediction: dice 1
    assert abs(dice_loss(p, g).item() - (1 - (first + second) / 2)) < 1e-7
