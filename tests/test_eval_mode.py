"""Every method predicts in eval mode whatever mode it is in (issue 13, "Eval mode where it belongs"):
straight after ``build()`` (an ``nn.Module`` in train mode) two predictions are identical and equal
to the eval-mode one, and the caller's mode is left as it was."""
from __future__ import annotations

import pytest
import torch

from sowa_lib import methods


def _built_with_references(name: str, eval_mode: bool) -> tuple[methods.AnomalyMethod, torch.Tensor]:
    """``name`` built for the demo (seeded init), switched to eval mode first if ``eval_mode``, with
    one reference image set (none for AGPNet's default multi-class setting); and two query images."""
    torch.manual_seed(0)
    method = methods.build(name, profile="demo")
    method.train(not eval_mode)
    size = method.image_size
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    method.set_references(images[:0] if name == "agpnet" else images[:1], "brick")
    return method, images[1:]


@pytest.mark.parametrize("name", methods.available())
def test_predict_straight_after_build_is_deterministic_and_equals_eval_mode(name):
    method, images = _built_with_references(name, eval_mode=False)
    assert method.training  # what build() returns: the case a user of the library meets
    modes = [m.training for m in method.modules()]
    first = method.finalize_category(method.predict(images, "brick"))
    second = method.finalize_category(method.predict(images, "brick"))
    assert [m.training for m in method.modules()] == modes  # the caller's modes are restored
    evaluated, _ = _built_with_references(name, eval_mode=True)
    reference = evaluated.finalize_category(evaluated.predict(images, "brick"))
    for pred in (first, second):
        assert torch.equal(pred.scores, reference.scores) and torch.equal(pred.maps, reference.maps)


def test_mixed_modes_are_restored_module_by_module():
    method = methods.build("april_gan", profile="demo").eval()
    method.heads.train()
    method.set_references(torch.zeros(0, 3, method.image_size, method.image_size), "brick")
    method.predict(torch.zeros(1, 3, method.image_size, method.image_size), "brick")
    assert not method.training and method.heads.training and not method.clip.training


def test_agpnet_few_shot_references_still_train_the_decoder():
    """AGPNet few-shot trains a decoder inside set_references: the eval-mode wrapper must not stop it."""
    method = methods.build("agpnet", profile="demo", setting="few_shot", few_shot_epochs=1, few_shot_folds=2,
                          drop_last=False)  # two augmented images: fewer than one batch
    before = {k: v.clone() for k, v in method.decoder.state_dict().items()}
    images = torch.randn(1, 3, method.image_size, method.image_size, generator=torch.Generator().manual_seed(2))
    method.set_references(images, "brick")
    after = method.decoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
