"""April-GAN (VAND 2023 challenge, official ByChelsea/VAND-APRIL-GAN), spec april_gan_winclip_peers §1.

Zero-shot (§1.5): four trainable ``Linear(width -> embed_dim)`` heads on the raw residual stream of
blocks 6/12/18/24 of ViT-L-14-336 at 518 px; L2-normalised tokens against the prompt-ensemble text
features × 100; logits upsampled bilinearly (``align_corners=True``) to the image size *before* the
2-way softmax; abnormal maps summed over layers. Image score: the CLS embedding's text probability.
Few-shot (§1.6): the shared memory recipe of :mod:`sowa_lib.methods.fewshot`, on the same encoder pass.
Training (§1.7): focal + Dice per layer on the auxiliary dataset's test split, for ``epochs`` epochs
with 2×2 mosaics at ``mosaic_rate``. The reference's schedule depends on the auxiliary dataset (3
epochs, mosaic 0.2 on MVTec AD; 15 epochs, no mosaic on VisA): that is study protocol, so it lives in
:data:`sowa_lib.profiles.AUXILIARY_TRAINING`, which the runner applies; built by hand, pass both.

Fidelity switches (reference behaviour is the default):

- ``activation``: ``"gelu"`` (the official 518-px path runs OpenAI weights with exact GELU, §1.1)
  or ``"quick_gelu"`` (what the weights were trained with).
- ``image_score``: few-shot image score ``"transductive_minmax"`` (§1.6) or ``"raw"``
  (``0.5·(p + max map)``, per image).
- ``reference_replacement``: K-shot references drawn with replacement (``torch.randint``, §1.6) or
  without; the runner reads it through :meth:`AprilGAN.draws_references_with_replacement`.
- ``precision``: ``"fp16_autocast"`` (default) runs every forward under CUDA fp16 autocast as the
  reference does (§1.1 "Precision"; a no-op on CPU, there as here); ``"fp32"`` never does.
- ``dice_single_image_quirk``: True (the official ``train.py``): a training batch holding one image
  (the last one when the dataset size is ≡ 1 mod 8) has its mask squeezed to ``[H, W]``, so its Dice
  averages over the H rows instead of over images (:func:`~sowa_lib.losses.dice_loss` ``per_row``);
  False: per image, as every other batch.
- ``round_fp16``: True (the reference loads OpenAI weights through open_clip's OpenAI loader, which
  builds the model in fp16 before loading, so a local fp32 file is rounded as OpenAI's ``clip.load``
  rounds it; :func:`~sowa_lib.backbones.clip.load_clip`) or False (the file's values as they are).

Known departures, kept on purpose (no switch):

- Which reference files are drawn (§1.6): the official ``test.py`` seeds torch once (42), builds
  CLIP and the heads (both consume the RNG), then draws each class's K files with ``torch.randint``
  in meta.json order, so a class's files depend on the model build and on the classes before it.
  Here the shared draw of :func:`sowa_lib.data.references.draw_references` is keyed on (dataset,
  category, K, seed): the same sampling law (with replacement, uniform over the sorted train/good
  files), not the same files, which could only be had by replaying ViT-L-14-336's initialisation.
- Initial heads (§1.3, §1.7): the official ``train.py`` seeds 111, builds CLIP (consuming the RNG),
  then creates the heads; here the heads are created right after seeding, so the initial (and hence
  the trained) heads differ from the official run's, with the same default PyTorch initialisation.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sowa_lib.backbones.clip import DEMO_TAPPED_CLIP, ClipBackbone, as_backbone
from sowa_lib.data.sample import Sample
from sowa_lib.losses import dice_loss, focal_loss
from sowa_lib.methods.base import AnomalyMethod, Prediction, RunContext, check_choice
from sowa_lib.methods.official_weights import load_trained_weights
from sowa_lib.methods.fewshot import (
    IMAGE_SCORE_MODES,
    MAP_MAX,
    few_shot_extras,
    few_shot_image_scores,
    finalize_few_shot,
    memory_distance_map,
)
from sowa_lib.ops import MemoryBank, resize_maps, tokens_to_grid
from sowa_lib.prompts import APRIL_GAN, class_scores, class_text_features
from sowa_lib.training import EpochCheckpoints, TrainingBatch, TrainingSchedule, train_segmentation

#: April-GAN's fixed logit scale of 100 (§1.5), as a temperature.
TEMPERATURE = 0.01
ACTIVATIONS = ("gelu", "quick_gelu")
PRECISIONS = ("fp16_autocast", "fp32")


class AprilGAN(AnomalyMethod):
    name = "april_gan"
    normalization = "clip"
    training_data = "auxiliary"
    cached = ("_text_features", "memory")
    inference_options = frozenset({"image_score", "reference_replacement"})
    profiles = {
        "demo": {
            **DEMO_TAPPED_CLIP,
            "epochs": 3,
            "mosaic_rate": 0.2,
        }
    }

    def __init__(
        self,
        backbone: ClipBackbone | str = "ViT-L-14-336",
        pretrained: str | None = "openai",
        backbone_checkpoint: str | None = None,
        image_size: int = 518,
        taps: Sequence[int] = (5, 11, 17, 23),
        activation: str = "gelu",
        image_score: str = "transductive_minmax",
        reference_replacement: bool = True,
        epochs: int | None = None,
        mosaic_rate: float | None = None,
        batch_size: int = 8,
        learning_rate: float = 1e-3,
        betas: tuple[float, float] = (0.5, 0.999),
        seed: int = 111,
        precision: str = "fp16_autocast",
        dice_single_image_quirk: bool = True,
        round_fp16: bool = True,
        checkpoint: str | None = None,
    ) -> None:
        """``pretrained``: an open_clip tag or None (random); ``backbone_checkpoint``: a local file of
        the CLIP weights instead. ``taps`` are 0-based block indices (the default is the paper's
        6/12/18/24). ``epochs``/``mosaic_rate``: the training schedule, needed by :meth:`fit` only
        (the reference's per auxiliary dataset: :data:`sowa_lib.profiles.AUXILIARY_TRAINING`).
        ``precision="fp16_autocast"`` runs every forward under CUDA fp16
        autocast as the reference does (§1.1; a no-op on CPU, as there); ``"fp32"`` never does.
        ``checkpoint``: trained heads to load — the authors' released ``{'trainable_linearlayer': ...}``
        file (a path, or ``"april_gan/mvtec"`` / ``"april_gan/visa"`` of
        :data:`~sowa_lib.methods.official_weights.REGISTRY`) or a file of our ``trainable_state_dict``."""
        super().__init__()
        check_choice("precision", precision, PRECISIONS)
        self.precision = precision
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("image_score", image_score, IMAGE_SCORE_MODES)
        self.dice_single_image_quirk = dice_single_image_quirk
        self.clip = as_backbone(backbone, pretrained, checkpoint=backbone_checkpoint, image_size=image_size,
                                quick_gelu=activation == "quick_gelu", round_fp16=round_fp16)
        self.image_size = self.clip.image_size
        self.taps = tuple(taps)
        self.image_score = image_score
        self.reference_replacement = reference_replacement
        self.epochs, self.mosaic_rate, self.batch_size = epochs, mosaic_rate, batch_size
        self.learning_rate, self.betas, self.seed = learning_rate, tuple(betas), seed
        with torch.random.fork_rng(devices=[]):
            # seeded right before the heads; the reference builds CLIP in between (module docstring)
            torch.manual_seed(seed)
            self.heads = nn.ModuleList(nn.Linear(self.clip.width, self.clip.embed_dim) for _ in self.taps)
        self.memory = MemoryBank(metric="cosine")
        self._text_features: dict[str, torch.Tensor] = {}
        if checkpoint is not None:  # trained weights: the authors' released file or ours (official_weights)
            load_trained_weights(self, checkpoint)

    @classmethod
    def draws_references_with_replacement(cls, config: dict[str, Any]) -> bool:
        """The ``reference_replacement`` option of ``config`` (§1.6: ``torch.randint``, with replacement)."""
        return bool(config["reference_replacement"])

    def frozen_forward(self, images: torch.Tensor) -> Any:
        """The frozen CLIP image encoder's plain forward (what :mod:`sowa_lib.speed` compares to)."""
        return self.clip.encode_image(images)

    @property
    def weights_id(self) -> str:
        return self.clip.weights_id

    def autocast(self) -> torch.autocast:
        """The reference's ``torch.cuda.amp.autocast()``: fp16 matmuls on CUDA, nothing elsewhere."""
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.precision == "fp16_autocast" and self.device.type == "cuda")

    # ------------------------------------------------------------------ text
    def text_features(self, category: str) -> torch.Tensor:
        """``[2, D]`` prompt-ensemble features (normal, abnormal) of ``category``, cached (§1.4)."""
        if category not in self._text_features:
            with self.autocast():  # the reference encodes prompts under autocast too (§1.4)
                self._text_features[category] = class_text_features(self.clip.encode_text, APRIL_GAN, category).to(self.dtype)
        return self._text_features[category]

    # ------------------------------------------------------------------ zero-shot maps
    def layer_probabilities(self, tapped: list[torch.Tensor], text: torch.Tensor) -> list[torch.Tensor]:
        """Per tapped layer ``[B, 2, S, S]`` softmax maps (§1.5): head, L2-normalise, × 100 against
        ``text`` (``[2, D]`` or per-sample ``[B, 2, D]``), upsample (align_corners=True), then softmax."""
        maps = []
        for head, tokens in zip(self.heads, tapped):
            patches = F.normalize(head(tokens[:, 1:]), dim=-1)
            text_t = F.normalize(text, dim=-1).transpose(-1, -2)
            logits = (patches @ text_t) / TEMPERATURE
            logits = resize_maps(tokens_to_grid(logits), self.image_size, align_corners=True)
            maps.append(logits.softmax(dim=1))
        return maps

    def training_loss(self, batch: TrainingBatch) -> torch.Tensor:
        """Σ over layers of focal(γ=2) + Dice on the abnormal channel (§1.7); backbone frozen. A batch of
        one image takes the per-row Dice unless ``dice_single_image_quirk=False``."""
        with self.autocast():
            with torch.no_grad():
                _, tapped = self.clip.encode_image(batch.images, self.taps)
            text = torch.stack([self.text_features(c) for c in batch.categories])
            probabilities = [p.float() for p in self.layer_probabilities(tapped, text)]
        per_row = self.dice_single_image_quirk and len(batch.masks) == 1
        return sum(focal_loss(p, batch.masks) + dice_loss(p[:, 1], batch.masks, per_row) for p in probabilities)

    # ------------------------------------------------------------------ training
    def schedule(self, seed: int) -> TrainingSchedule:
        """The options' epochs and mosaic rate, with the training's ``seed``; both must be given."""
        if self.epochs is None or self.mosaic_rate is None:
            raise ValueError("April-GAN trains with epochs= and mosaic_rate=: pass both (the reference's are 3 and 0.2 "
                             "on MVTec AD, 15 and 0.0 on VisA; the runner applies sowa_lib.profiles.AUXILIARY_TRAINING)")
        return TrainingSchedule(epochs=self.epochs, batch_size=self.batch_size, mosaic_rate=self.mosaic_rate, seed=seed)

    def fit(self, samples: Sequence[Sample], context: RunContext = RunContext()) -> dict[str, Any]:
        """Train the heads (Adam lr 1e-3, betas (0.5, 0.999), batch 8, §1.7); resumes from the last
        epoch checkpoint in ``context.checkpoint_dir``, where each epoch's heads are saved.
        ``context.seed`` (None: the ``seed`` option) seeds the shuffles and mosaics; the initial heads
        come from the ``seed`` option at construction."""
        schedule = self.schedule(self.seed if context.seed is None else context.seed)
        optimizer = torch.optim.Adam(self.heads.parameters(), lr=self.learning_rate, betas=self.betas)
        checkpoints = EpochCheckpoints(context.checkpoint_dir)
        start_epoch, previous = 0, []
        if (last := checkpoints.restore(self.load_trainable_state_dict, optimizer)) is not None:
            start_epoch, previous = last["epoch"] + 1, last["losses"]
        self.heads.train()
        losses = train_segmentation(
            samples,
            self.training_loss,
            optimizer,
            schedule,
            image_size=self.image_size,
            normalization=self.normalization,
            device=self.device,
            start_epoch=start_epoch,
            on_epoch_end=lambda epoch, steps: checkpoints.save(epoch, self.trainable_state_dict(), optimizer, previous + steps),
            progress=context.progress,
        )
        self.heads.eval()
        return {"loss": previous + losses, "epochs": schedule.epochs, "mosaic_rate": schedule.mosaic_rate}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def set_references(self, images: torch.Tensor, category: str, context: RunContext | None = None) -> None:
        """Per-layer memory of the K references' raw patch tokens (§1.6); K = 0 clears it."""
        if len(images) == 0:
            self.memory.clear()
            return
        with self.autocast():
            _, tapped = self.clip.encode_image(images.to(self.device), self.taps)
        self.memory.set([t[:, 1:].to(self.dtype) for t in tapped])

    @torch.no_grad()
    def predict(self, images: torch.Tensor, category: str) -> Prediction:
        """One encoder pass per image: zero-shot maps, image probability and (K > 0) memory distances."""
        text, dtype = self.text_features(category), self.dtype
        with self.autocast():
            cls_embedding, tapped = self.clip.encode_image(images, self.taps)
            maps = sum(p[:, 1].to(dtype) for p in self.layer_probabilities(tapped, text))
        tapped = [t.to(dtype) for t in tapped]
        scores = class_scores(cls_embedding.to(dtype), text, TEMPERATURE)[:, 1]
        extras: dict[str, torch.Tensor] = {}
        if len(self.memory):
            maps = maps + memory_distance_map(self.memory, [t[:, 1:] for t in tapped], self.image_size)
            extras = few_shot_extras(scores, maps)
            scores = few_shot_image_scores(scores, extras[MAP_MAX], "raw")
        return Prediction(scores=scores.float().cpu(), maps=maps.float().cpu(), extras={k: v.cpu() for k, v in extras.items()})

    def finalize_category(self, pred: Prediction) -> Prediction:
        """Few-shot image score over the category's test images (§1.6, ``image_score``)."""
        return finalize_few_shot(pred, self.image_score)
