"""Prompt ensembles (data) and their text-feature averaging rules.

Two ensembles, copied exactly from the reference code (spec april_gan_winclip_peers §1.4, §2.2):

- ``APRIL_GAN``: 7 normal + 5 abnormal states × 35 templates; features are L2-normalised per
  sentence, averaged, normalised again (``"normalize_mean_normalize"``).
- ``WINCLIP``: anomalib's 7 normal + 4 anomalous states × 21 templates, including its duplicated
  ``"a jpeg corrupted photo of the {}."``; features are the mean of the raw embeddings (``"mean"``).
  :func:`winclip_ensemble` swaps each of these choices for its alternative (WinCLIP's switches).

Sentences are ``template.format(state.format(class_name))`` with states outer and templates inner.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PromptEnsemble:
    """State words and templates of one method, and how its sentence features are averaged."""

    normal_states: tuple[str, ...]
    abnormal_states: tuple[str, ...]
    templates: tuple[str, ...]
    averaging: str  # "normalize_mean_normalize" (April-GAN) or "mean" (anomalib WinCLIP)

    def sentences(self, class_name: str, abnormal: bool) -> list[str]:
        """All sentences of one state group: states outer, templates inner (§1.4)."""
        states = self.abnormal_states if abnormal else self.normal_states
        return [template.format(state.format(class_name)) for state in states for template in self.templates]


APRIL_GAN_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a low resolution photo of the {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a photo of my {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a photo of one {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "a dark photo of a {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)

WINCLIP_TEMPLATES: tuple[str, ...] = (
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.",  # duplicated in anomalib and zqhang ("of a" missing), kept
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)

NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)

APRIL_GAN = PromptEnsemble(
    normal_states=NORMAL_STATES,
    abnormal_states=("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage"),
    templates=APRIL_GAN_TEMPLATES,
    averaging="normalize_mean_normalize",
)

WINCLIP = PromptEnsemble(
    normal_states=NORMAL_STATES,
    abnormal_states=("damaged {}", "{} with flaw", "{} with defect", "{} with damage"),
    templates=WINCLIP_TEMPLATES,
    averaging="mean",
)

#: WinCLIP's template lists: anomalib's 21 (``"anomalib"``, with its duplicate) or the same list with
#: the duplicate's second copy read as the missing ``"a jpeg corrupted photo of a {}."``
#: (``"deduplicated"``: every article pair complete, as the other template pairs; spec §2.2).
WINCLIP_TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "anomalib": WINCLIP_TEMPLATES,
    "deduplicated": (*WINCLIP_TEMPLATES[:8], "a jpeg corrupted photo of a {}.", *WINCLIP_TEMPLATES[9:]),
}
#: WinCLIP's anomalous states: anomalib's 4 (``"anomalib"``) or with ``"broken {}"`` (``"with_broken"``,
#: the five states of the WinCLIP paper's list, placed as April-GAN places it; issue #18).
WINCLIP_ABNORMAL_STATES: dict[str, tuple[str, ...]] = {
    "anomalib": WINCLIP.abnormal_states,
    "with_broken": ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage"),
}
#: How sentence features become a class feature: anomalib's mean of raw embeddings, or the usual CLIP
#: ensemble (April-GAN's): normalise each, average, normalise again.
AVERAGING_RULES: tuple[str, ...] = ("mean", "normalize_mean_normalize")


def winclip_ensemble(templates: str = "anomalib", abnormal_states: str = "anomalib", averaging: str = "mean") -> PromptEnsemble:
    """WinCLIP's ensemble with each of anomalib's choices selectable (defaults: :data:`WINCLIP`)."""
    for option, value, choices in (("templates", templates, WINCLIP_TEMPLATE_SETS), ("abnormal_states", abnormal_states, WINCLIP_ABNORMAL_STATES),
                                   ("averaging", averaging, AVERAGING_RULES)):
        if value not in choices:
            raise ValueError(f"{option}={value!r}; choose one of {tuple(choices)}")
    return replace(WINCLIP, templates=WINCLIP_TEMPLATE_SETS[templates], abnormal_states=WINCLIP_ABNORMAL_STATES[abnormal_states],
                   averaging=averaging)

#: anomalib's class name when none is given (spec §2.4).
DEFAULT_CLASS_NAME = "object"


def average_features(features: torch.Tensor, averaging: str) -> torch.Tensor:
    """One group's sentence features ``[S, D]`` -> ``[D]`` by the ensemble's averaging rule."""
    if averaging == "normalize_mean_normalize":
        return F.normalize(F.normalize(features, dim=-1).mean(dim=0), dim=-1)
    if averaging == "mean":
        return features.mean(dim=0)
    raise ValueError(f"unknown averaging {averaging!r}")


@torch.no_grad()
def class_text_features(
    encode_text: Callable[[Sequence[str]], torch.Tensor], ensemble: PromptEnsemble, class_name: str
) -> torch.Tensor:
    """``[2, D]`` text features of ``class_name``: row 0 normal, row 1 abnormal (§1.4, §2.2).

    ``encode_text`` maps sentences to un-normalised features (e.g. :meth:`ClipBackbone.encode_text`).
    The class name is used verbatim, underscores kept, as both reference codes do.
    """
    groups = [ensemble.sentences(class_name, abnormal) for abnormal in (False, True)]
    return torch.stack([average_features(encode_text(sentences), ensemble.averaging) for sentences in groups])


def cosine_similarity(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``[..., D]`` × ``[C, D]`` -> ``[..., C]`` cosine similarities (spec §2.4 golden case)."""
    return F.normalize(features, dim=-1) @ F.normalize(text, dim=-1).T


def class_scores(features: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(cos(features, text) / temperature)`` over the ``C`` text classes, ``[..., C]``.

    WinCLIP (anomalib) uses ``temperature=0.07``; April-GAN's fixed ×100 is ``temperature=0.01``.
    """
    return (cosine_similarity(features, text) / temperature).softmax(dim=-1)
