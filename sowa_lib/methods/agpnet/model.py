"""AGPNet, the method (spec agpnet §1–3): :class:`AGPNet`, its inference, perturbation and training. Tags and equations: :mod:`sowa_lib.methods.agpnet`."""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sowa_lib import ops
from sowa_lib.backbones.dino import DINO_IMAGE_SIZE, DINO_VIT_S16, TINY_DINO
from sowa_lib.backbones.taps import minmax_per_sample
from sowa_lib.data.sample import Sample
from sowa_lib.data.transforms import load_images
from sowa_lib.methods.agpnet.decoder import ReconstructionDecoder
from sowa_lib.methods.agpnet.extractor import build_extractor
from sowa_lib.methods.agpnet.perturbation import (
    ema_update, feature_noise_intensity, flat_cosine_loss, image_noise_ratio, learning_rate_factor, rotate_flip_augment,
    token_distance, top_ratio_mask,
)
from sowa_lib.methods.base import AnomalyMethod, Prediction, RunContext, check_choice
from sowa_lib.training import EpochCheckpoints, batch_count, epoch_mean_losses, shuffled_batches, train_epochs

SETTINGS = ("multi_class", "one_class", "few_shot")
NOISE_TYPES = ("attention", "random", "none")
RANDOM_IMAGE_REGIONS = ("area", "whole")
MASK_SOURCES = ("both", "prior", "teacher")
WEIGHT_DECAY_PARAMS = ("matrices", "all")
INTERPOLATIONS = ("bilinear", "bicubic")
#: ViTAD's learning-rate rule [V]: ``BASE_LR × batch_size / LR_REFERENCE_BATCH``.
BASE_LR, LR_REFERENCE_BATCH = 1e-4, 8
#: Decoder width and heads behind a CNN extractor, which has no ViT width to follow [?]: ViT-S's.
CNN_DECODER_DIM, CNN_DECODER_HEADS = 384, 6


class AGPNet(AnomalyMethod):
    """AGPNet (spec ``agpnet``), trained on normal target images: multi-class (one model for all
    categories), one-class (one per category; the runner calls :meth:`fit` per category) or
    few-shot (training on the K references inside :meth:`set_references`).

    Every ablation of the paper is an option: ``feature_noise`` / ``image_noise`` ∈ {"attention",
    "random", "none"} (Table 5; ``random_image_region`` says what image-level "random" noises),
    ``feature_noise_scale`` fixed λ ∈ {0.5, 1.0, 1.5} vs the schedule
    (None; Table 7), ``mask_source`` ∈ {"both", "prior", "teacher"} (Table 7 B/L/D), ``taps`` (Table 8),
    ``mean_teacher`` (Table 8), ``backbone`` (Table 6: DINO ViT-S, CLIP ViT-B ``"ViT-B-16"``,
    ``"wide_resnet50_2"``, ``"efficientnet_b4"``).
    """

    name: ClassVar[str] = "agpnet"
    normalization: ClassVar[str] = "imagenet"
    training_data: ClassVar[str] = "target"
    trains_on_references: ClassVar[bool] = True
    configured_by_setting: ClassVar[bool] = True
    inference_options: ClassVar[frozenset[str]] = frozenset({"distance", "smoothing_sigma", "score_pool"})
    profiles: ClassVar[dict[str, dict[str, Any]]] = {
        # Tiny ViT of the DINO family at 128 px (8×8 tokens); σ and the pooling window scaled with the
        # image. The curriculum keeps its shape (schedules are fractions of the epochs). EMA: the
        # paper's ~5.7k updates (57k steps / 10) over a 10k-update horizon (m = 0.9999) give a ratio
        # ~0.6; the demo's multi-class run (32 updates, one per step, horizon 50) keeps it. Few-shot
        # uses the 8 right-angle rotations/flips and half the epochs to fit the CPU budget.
        "demo": {
            "backbone": TINY_DINO, "image_size": 128, "taps": (0, 1, 2, 3), "epochs": 8, "batch_size": 8,
            "learning_rate": 1e-3, "ema_every": 1, "ema_momentum": 0.98, "smoothing_sigma": 2.0, "score_pool": 8,
            "few_shot_folds": 8, "few_shot_epochs": 4,
        },
    }

    def __init__(
        self,
        *,
        setting: str = "multi_class",
        backbone: str | nn.Module = DINO_VIT_S16,
        pretrained: str | None = "default",
        backbone_checkpoint: str | Path | None = None,
        image_size: int = DINO_IMAGE_SIZE,
        taps: Sequence | None = None,
        attention_blocks: Sequence[int] | None = None,
        decoder_depth: int = 4,
        decoder_dim: int | None = None,
        decoder_heads: int | None = None,
        decoder_mlp_ratio: float = 4.0,
        epochs: int = 500,
        batch_size: int = 32,
        learning_rate: float | None = None,
        weight_decay: float = 1e-4,
        learning_rate_decay_fraction: float = 0.4,
        feature_noise: str = "attention",
        image_noise: str = "attention",
        feature_noise_scale: float | None = None,
        noise_gamma: float = 1.0,
        image_noise_std: float = 1.0,
        random_image_region: str = "area",
        mask_source: str = "both",
        mean_teacher: bool = True,
        ema_momentum: float = 0.9999,
        ema_every: int = 10,
        distance: str = "cosine",
        smoothing_sigma: float = 4.0,
        score_pool: int = 16,
        few_shot_folds: int = 32,
        few_shot_epochs: int | None = None,
        max_steps_per_epoch: int | None = None,
        fusion: bool = True,
        weight_decay_params: str = "matrices",
        grad_clip_norm: float | None = 5.0,
        drop_last: bool = True,
        image_interpolation: str = "bilinear",
        seed: int = 0,
    ) -> None:
        """Defaults reproduce the paper (tags as in the package docstring, :mod:`sowa_lib.methods.agpnet`).

        setting: "multi_class" [P headline] / "one_class" / "few_shot".
        backbone, pretrained: DINO ViT-S/16 [P] via timm, ``pretrained`` "default" (each family's usual
            weights: timm's ``dino`` tag, CLIP ``openai``, torchvision ImageNet), another tag of the
            family, or None (random); or a built :class:`DinoBackbone` / :class:`ClipBackbone` / CNN name.
        backbone_checkpoint: a local file of the backbone's weights, loaded instead of ``pretrained``.
        image_size: 256 [V]. taps: 0-based blocks (2, 5, 8, 11) [V-style, ?]; attention_blocks: whose
            CLS attention forms the prior, default the taps ("the associated attention maps") [P].
        decoder_depth 4 [P]; decoder_dim / decoder_heads: default the extractor's width / heads
            (384 / 6 for ViT-S [P]; CNNs: 384 / 6 [?]); decoder_mlp_ratio 4 [V] (package docstring:
            why the parameter count exceeds the paper's 4.42 M).
        epochs 500, batch_size 32 [P]; learning_rate: default ``BASE_LR``·batch/``LR_REFERENCE_BATCH`` [V];
            weight_decay 1e-4 [V]; learning rate × 0.1 after ``learning_rate_decay_fraction`` of the epochs (200/500) [P].
        feature_noise_scale: None = the 0 → 1 schedule [P]; a float fixes λ (Table 7 ablation).
        noise_gamma γ = 1 [?]; image_noise_std = 1 in normalised pixel units [?].
        random_image_region: where ``image_noise="random"`` adds noise (spec §2: "the same noise with a
            uniform mask"). "area" [?]: a uniformly random region of the attention region's area r(t),
            so that only *where* differs from "attention"; "whole": every pixel (an all-ones mask,
            as feature-level "random" uses).
        mask_source "both" [P best]; mean_teacher True, ema_momentum 0.9999, ema_every 10 steps [P].
        distance "cosine" [V] or "l2"; smoothing_sigma 4 [V]; score_pool 16 (stride 1) [V].
        few_shot_folds 32 [P]; few_shot_epochs: default ``epochs`` (the paper gives none for few-shot) [?].
        max_steps_per_epoch: None (every batch, as the paper); the smoke profile's 1 cuts each epoch
            to its first batch (a few-shot epoch is K batches of 32 views).
        ViTAD's training details, the paper silent on each [V] (package docstring): fusion True (a
            learnable Linear(C, C) before the decoder; False: none), weight_decay_params "matrices"
            (decay only ≥ 2-D non-bias tensors; "all": every tensor), grad_clip_norm 5.0 (None: no
            clipping), drop_last True (the last partial batch of an epoch is dropped), image_interpolation
            "bilinear" (antialiased as PIL; "bicubic": the other methods' resize).
        seed: decoder init, shuffling and noise, unless the run context gives one (:meth:`fit`).
        """
        super().__init__()
        for option, value, allowed in (("setting", setting, SETTINGS), ("feature_noise", feature_noise, NOISE_TYPES),
                                       ("image_noise", image_noise, NOISE_TYPES), ("mask_source", mask_source, MASK_SOURCES),
                                       ("random_image_region", random_image_region, RANDOM_IMAGE_REGIONS),
                                       ("distance", distance, ("cosine", "l2")), ("weight_decay_params", weight_decay_params, WEIGHT_DECAY_PARAMS),
                                       ("image_interpolation", image_interpolation, INTERPOLATIONS)):
            check_choice(option, value, allowed)
        self.setting, self.image_size, self.seed = setting, image_size, seed
        self.extractor, self.normalization = build_extractor(backbone, pretrained, backbone_checkpoint, image_size, taps, attention_blocks)
        self.decoder_shape = dict(
            feature_dim=self.extractor.width, tokens=self.extractor.grid_size ** 2,
            dim=decoder_dim or (self.extractor.width if self.extractor.num_heads else CNN_DECODER_DIM),
            depth=decoder_depth, heads=decoder_heads or self.extractor.num_heads or CNN_DECODER_HEADS, mlp_ratio=decoder_mlp_ratio,
            fusion=fusion,
        )
        self.weight_decay_params, self.grad_clip_norm, self.drop_last = weight_decay_params, grad_clip_norm, drop_last
        self.interpolation = image_interpolation
        self.epochs, self.batch_size, self.weight_decay = epochs, batch_size, weight_decay
        self.learning_rate_decay_fraction = learning_rate_decay_fraction
        self.learning_rate = learning_rate if learning_rate is not None else BASE_LR * batch_size / LR_REFERENCE_BATCH
        self.feature_noise, self.image_noise, self.mask_source = feature_noise, image_noise, mask_source
        self.feature_noise_scale, self.noise_gamma, self.image_noise_std = feature_noise_scale, noise_gamma, image_noise_std
        self.random_image_region = random_image_region
        self.mean_teacher, self.ema_momentum, self.ema_every = mean_teacher, ema_momentum, ema_every
        self.distance, self.smoothing_sigma, self.score_pool = distance, smoothing_sigma, score_pool
        self.few_shot_folds, self.few_shot_epochs = few_shot_folds, few_shot_epochs or epochs
        self.max_steps_per_epoch = max_steps_per_epoch
        self.reset_decoder(seed)

    # ------------------------------------------------------------------ model pieces
    def reset_decoder(self, seed: int) -> None:
        """A freshly initialised decoder (from ``seed``) and its mean-teacher copy."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            decoder = ReconstructionDecoder(**self.decoder_shape)
        device = self.device
        self.decoder = decoder.to(device)
        self.teacher = copy.deepcopy(self.decoder).requires_grad_(False)

    @property
    def weights_id(self) -> str:
        """The frozen extractor's weights (``"<arch>:<tag>"``, ``"<arch>:random"``, ``"<arch>:file:<sha>"``)."""
        return self.extractor.weights_id

    def frozen_forward(self, images: torch.Tensor) -> Any:
        """The plain forward of the frozen backbone the extractor taps (timm's ``forward_features`` for DINO)."""
        return self.extractor.frozen_forward(images)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """``decoder.*`` (used at inference) and ``teacher.*`` (EMA copy, training only)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k.startswith(("decoder.", "teacher."))}

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target ``F`` and reconstruction ``F̂``, both ``[N, T, C]``, of clean images."""
        target, _ = self.extractor(images, with_prior=False)
        return target, self.decoder(target)

    # ------------------------------------------------------------------ inference (§1)
    @torch.no_grad()
    def predict(self, images: torch.Tensor, category: str) -> Prediction:
        """Anomaly maps ``[N, S, S]``: per-token distance, bilinear up (align_corners=True [V]),
        Gaussian σ; scores: max of the ``score_pool``-window average-pooled map (stride 1)."""
        target, reconstruction = self.reconstruct(images)
        grid = ops.tokens_to_grid(token_distance(reconstruction, target, self.distance))
        maps = ops.gaussian_blur(ops.resize_maps(grid, self.image_size, align_corners=True), self.smoothing_sigma)
        scores = F.avg_pool2d(maps.unsqueeze(1), self.score_pool, stride=1).flatten(1).amax(dim=1)
        return Prediction(scores=scores.float().cpu(), maps=maps.float().cpu())

    # ------------------------------------------------------------------ perturbation (§2)
    def attention_mask(self, target: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """Final mask ``A`` ``[N, T]`` in [0, 1]: min-max normalised prior and/or learnable mask, averaged
        when both [?]; the learnable one comes from the EMA teacher, or from the decoder itself when
        ``mean_teacher=False`` (Table 8 baseline)."""
        parts = []
        if self.mask_source in ("both", "prior"):
            parts.append(minmax_per_sample(prior))
        if self.mask_source in ("both", "teacher"):
            source = self.teacher if self.mean_teacher else self.decoder
            parts.append(minmax_per_sample(source.attention_received(target)))
        return minmax_per_sample(torch.stack(parts).mean(0))

    def perturbed_inputs(
        self, images: torch.Tensor, epoch: int, total_epochs: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The clean target ``F`` and the decoder inputs at ``epoch`` of ``total_epochs``: feature-perturbed
        ``F̃`` and, unless ``image_noise="none"``, the image- and feature-perturbed ``F̃(x̃)`` (eqs. 4, 6–7)."""
        wants_attention = "attention" in (self.feature_noise, self.image_noise)
        with torch.no_grad():
            target, prior = self.extractor(images, with_prior=wants_attention and self.mask_source != "teacher")
            tokens = target.shape[:2]
            mask = self.attention_mask(target, prior) if wants_attention else None
            scale = self.feature_noise_scale if self.feature_noise_scale is not None else feature_noise_intensity(epoch, total_epochs)
            feature_weight = self._feature_weight(tokens, mask, generator)

            def perturb_features(features: torch.Tensor) -> torch.Tensor:
                if feature_weight is None:
                    return features
                noise = torch.randn(features.shape, generator=generator, device=features.device)
                return features + scale * self.noise_gamma * feature_weight.unsqueeze(-1) * noise

            inputs = [perturb_features(target)]
            if self.image_noise != "none":
                region = self._image_region(mask, tokens, image_noise_ratio(epoch, total_epochs), generator)
                noise = torch.randn(images.shape, generator=generator, device=images.device)
                noisy_target, _ = self.extractor(images + self.image_noise_std * region.unsqueeze(1) * noise, with_prior=False)
                inputs.append(perturb_features(noisy_target))
        return target, inputs

    def _feature_weight(self, tokens: torch.Size, mask: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor | None:
        """Norm(A) for "attention" [P]; a uniform all-ones mask for "random" (same noise everywhere) [?]."""
        if self.feature_noise == "attention":
            return mask
        if self.feature_noise == "random":
            return torch.ones(tokens, device=generator.device)
        return None

    def _image_region(self, mask: torch.Tensor | None, tokens: torch.Size, ratio: float, generator: torch.Generator) -> torch.Tensor:
        """Where the image noise goes, float ``[N, S, S]``: the attention mask ``[N, T]`` upsampled
        bilinearly to the image and binarised keeping the top ``ratio`` of pixels [P]. For "random"
        (``random_image_region``): uniform random token scores in its place, so a random region of the
        same area is noised ("area" [?]), or every pixel ("whole")."""
        if self.image_noise == "random" and self.random_image_region == "whole":
            return torch.ones(tokens[0], self.image_size, self.image_size, device=generator.device)
        scores = mask if self.image_noise == "attention" else torch.rand(tokens, generator=generator, device=generator.device)
        upsampled = ops.resize_maps(ops.tokens_to_grid(scores), self.image_size, align_corners=True)
        return top_ratio_mask(upsampled, ratio).float()

    # ------------------------------------------------------------------ training (§3)
    def training_loss(self, images: torch.Tensor, epoch: int, total_epochs: int, generator: torch.Generator) -> torch.Tensor:
        """``L = L_f + L_if``: every perturbed input's reconstruction against the clean ``F``."""
        target, inputs = self.perturbed_inputs(images, epoch, total_epochs, generator)
        reconstructions = self.decoder(torch.cat(inputs)).split(len(images))
        return sum(flat_cosine_loss(r, target) for r in reconstructions)

    def fit(self, samples: Sequence[Sample], context: RunContext = RunContext()) -> dict[str, Any]:
        """Train a fresh decoder on the normal images of ``samples`` (multi-/one-class), resuming from
        the epoch snapshots in ``context.checkpoint_dir``. Few-shot training happens in :meth:`set_references`."""
        if self.setting == "few_shot":
            raise ValueError("few-shot AGPNet trains on the K references in set_references, not in fit")
        normal = [s for s in samples if s.label == 0]
        if not normal:
            raise ValueError("AGPNet trains on normal images; none given")
        images = load_images(normal, self.image_size, self.normalization, self.interpolation)
        return self.train_on_images(images, self.epochs, context)

    def set_references(self, images: torch.Tensor, category: str, context: RunContext | None = None) -> None:
        """Few-shot: a fresh decoder trained on the 32-fold rotate/flip augmented K references [P].

        ``context.checkpoint_dir``: where this training keeps its epoch snapshot and resumes from it,
        as :meth:`fit`. The caller gives one folder per (dataset, category, K, reference-draw seed):
        the snapshot only checks the image count and :meth:`config`, not which images they are."""
        if self.setting != "few_shot":
            if len(images):
                raise ValueError(f"AGPNet built with setting={self.setting!r} takes no references; use setting='few_shot'")
            return
        if not len(images):
            raise ValueError("few-shot AGPNet needs K >= 1 reference images")
        context = replace(context or RunContext(), progress=False)
        self.train_on_images(rotate_flip_augment(images.cpu(), self.few_shot_folds), self.few_shot_epochs, context)

    def train_on_images(self, images: torch.Tensor, epochs: int, context: RunContext) -> dict[str, Any]:
        """A fresh decoder (seed: ``context.seed``, else the ``seed`` option) trained by AdamW over
        ``epochs`` epochs of shuffled batches (:func:`~sowa_lib.training.train_epochs`); the EMA
        teacher follows every ``ema_every`` steps. Each epoch's snapshot (decoder, teacher, optimiser,
        step losses, generator state; :class:`~sowa_lib.training.EpochCheckpoints`) lets a resumed run
        continue bit for bit; one written for another configuration or image count is refused."""
        seed = context.seed if context.seed is not None else self.seed
        self.reset_decoder(seed)
        device = self.device
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=self.learning_rate)
        generator = torch.Generator(device=device).manual_seed(seed)
        checkpoints = EpochCheckpoints(context.checkpoint_dir, keep_last=True,
                                       identity={"config": self.training_config(), "images": len(images), "epochs": epochs, "seed": seed})
        previous: list[float] = []
        if (snapshot := checkpoints.restore(self.load_trainable_state_dict, optimizer)) is not None:
            generator.set_state(snapshot["generator"])
            previous = list(snapshot["losses"])
        steps, per_epoch = len(previous), batch_count(len(images), self.batch_size, self.drop_last)
        per_epoch = min(per_epoch, self.max_steps_per_epoch or per_epoch)

        def set_learning_rate(epoch: int) -> None:
            for group in optimizer.param_groups:
                group["lr"] = self.learning_rate * learning_rate_factor(epoch + 1, epochs, self.learning_rate_decay_fraction)

        def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, int]]:
            for index in shuffled_batches(len(images), self.batch_size, generator, self.drop_last)[:per_epoch]:
                yield images[index.cpu()].to(device), epoch + 1

        def follow_teacher() -> None:
            nonlocal steps
            steps += 1
            if self.mean_teacher and steps % self.ema_every == 0:
                ema_update(self.teacher, self.decoder, self.ema_momentum)

        def clip_gradients() -> None:
            nn.utils.clip_grad_norm_(self.decoder.parameters(), self.grad_clip_norm)

        self.decoder.train()
        losses = previous + train_epochs(
            epoch_batches, lambda batch: self.training_loss(*batch, epochs, generator), optimizer, epochs,
            start_epoch=snapshot["epoch"] + 1 if snapshot is not None else 0,
            steps_per_epoch=per_epoch, on_epoch_start=set_learning_rate,
            clip_gradients=clip_gradients if self.grad_clip_norm is not None else None, after_step=follow_teacher, progress=context.progress, desc="agpnet",
            on_epoch_end=lambda epoch, so_far: checkpoints.save(epoch, self.trainable_state_dict(), optimizer, previous + so_far,
                                                                generator=generator.get_state()),
        )
        self.decoder.eval()
        return {"loss": epoch_mean_losses(losses, per_epoch), "epochs": epochs, "steps": len(losses), "images": len(images)}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: ``weight_decay`` on ≥ 2-D non-bias tensors only (ViTAD, ``"matrices"``) or on all."""
        named = list(self.decoder.named_parameters())
        if self.weight_decay_params == "all":
            return [{"params": [p for _, p in named], "weight_decay": self.weight_decay}]
        decayed = [p.ndim >= 2 and not name.endswith(".bias") for name, p in named]
        return [{"params": [p for (_, p), d in zip(named, decayed) if d], "weight_decay": self.weight_decay},
                {"params": [p for (_, p), d in zip(named, decayed) if not d], "weight_decay": 0.0}]
