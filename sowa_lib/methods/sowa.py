"""SOWA: hierarchical frozen window self-attention adapters on a frozen CLIP (spec sowa).

Pipeline (spec §1): a frozen OpenAI CLIP ViT-L/14@336 (QuickGELU) is tapped after blocks
[5, 11, 17, 23]; each tap's patch tokens go through their own HFWA adapter
(:mod:`sowa_lib.methods.sowa_adapter`) and the frozen ``visual.proj``; learnable class-agnostic
prompts ("object" / "damaged object", 12 context vectors each) go through the frozen text encoder
and a learnable text Linear. Per layer, cosine patch-text similarities are upsampled bilinearly
(``align_corners=True``) and softmaxed over the 2 states; the abnormal maps are summed over layers
and smoothed with a Gaussian (σ = 4). The image score is ``softmax(cos(CLS, text) / 0.07)``.
K-shot: a memory of *raw* tap tokens adds summed nearest-neighbour cosine distances (§1.8), and the
image score becomes 0.5·p + 0.5·min-max of the map maxima over the category (``finalize_category``).

Fidelity switches (spec §5.4; the reference code's behaviour is each default):

- ``image_loss``: ``"ce_on_probs"`` (CrossEntropy on already-softmaxed probabilities, §5.4.1) or
  ``"ce"`` (CrossEntropy on the logits z/T, what "BCE" in Fig. 2 suggests).
- ``memory_features``: ``"raw"`` (un-adapted tap tokens, §5.4.2) or ``"adapted"`` (HFWA outputs, as
  Fig. 4 reads).
- ``share_adapters``: False (one HFWA adapter per tapped layer: the config's ``share_weight: true``
  is ignored by the code, §5.4.3) or True (one set of learnable adapter weights for all layers, each
  layer still attending with its own frozen CLIP attention).
- §5.4.4, the HFWA pieces that Fig. 2(b, c) leaves out or draws differently (details in
  :class:`~sowa_lib.methods.sowa_adapter.WindowOptions`):
  ``linear_residual`` (the second residual x1 + LN(Lin(x1)), or Fig. 2(b)'s LN(Lin(x1)));
  ``in_proj_bias`` (False: the code drops CLIP's in_proj bias); ``logit_scale`` (``"learned"`` or
  ``"fixed"`` at 10); ``position_bias`` (``"continuous"`` Swin-V2, ``"table"`` Swin-V1 or
  ``"none"``); ``out_proj`` (True: CLIP's frozen out_proj after the attention).
- ``round_fp16``: True (OpenAI's ``clip.load`` builds the model in fp16 and copies the checkpoint
  into it, so a local fp32 file is rounded; the released ``ViT-L-14-336px.pt`` is fp16 already) or
  False (the file's values; :func:`~sowa_lib.backbones.clip.load_clip`).
- ``patch_ln_post``: False (patch tokens hit ``visual.proj`` without ``ln_post``, §5.4.5) or True.
- ``text_linear``: True (the learnable text Linear that the README does not mention, §5.4.6) or False.
- ``mosaic_label_fix``: False (a mosaic keeps the replaced sample's label, §5.4.9) or True (label =
  any tile anomalous).
- ``epochs``: 1 (trainer default, §5.4.12).
- ``lr_schedule``: ``"plateau"`` (ReduceLROnPlateau(mode min, factor 0.1, patience 5) on each epoch's
  mean training loss, §2.3; a no-op at the default single epoch) or ``"none"``.
- ``keep_checkpoint``: ``"best_train_loss"`` (ModelCheckpoint on ``train/loss``: the weights of the
  epoch with the lowest mean training loss are the trained model, and EarlyStopping stops after
  ``early_stopping_patience`` = 10 epochs without a new lowest loss, §2.3) or ``"last"`` (the last
  epoch's weights, no early stopping). Equal at one epoch.
- ``train_mask_threshold``: 0.0 (training masks binarised ``> 0`` after PIL-like bilinear resizing,
  §2.2; :func:`~sowa_lib.data.transforms.mask_to_tensor`) or 0.5 (as at test time).
- ``image_score``: ``"transductive_minmax"`` (§1.8) or ``"raw"`` (0.5·p + 0.5·max, no
  category statistics). Where every map maximum of a category is equal, the transductive min-max
  gives 0 here (:func:`~sowa_lib.ops.minmax`) where the official code divides 0 by 0 (NaN).

Initialisation order (a known departure, no switch): the official ``train.py`` calls
``seed_everything(2025)``, then ``clip.load`` (building the model consumes the RNG before the
weights are loaded), then creates the prompts, the adapters and the text Linear ("fusion"). Here CLIP
is built first from its own seed (or loaded), then the RNG is seeded with ``seed`` and the adapters,
the prompts and the text Linear are created in that order: the same initialisation laws, other
initial values (and hence other trained weights) than an official run's.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sowa_lib.backbones.clip import DEMO_TAPPED_CLIP, ClipBackbone, as_backbone
from sowa_lib.data.sample import Sample
from sowa_lib.losses import dice_loss, focal_loss
from sowa_lib.methods.base import AnomalyMethod, Prediction, RunContext, check_choice
from sowa_lib.methods.fewshot import IMAGE_SCORE_MODES, few_shot_extras, finalize_few_shot, memory_distance_map
from sowa_lib.methods.official_weights import load_trained_weights
from sowa_lib.methods.sowa_adapter import HFWAAdapter, WindowOptions, share_trainable_parts
from sowa_lib.ops import MemoryBank, gaussian_blur, resize_maps, tokens_to_grid
from sowa_lib.training import (
    EpochCheckpoints,
    TrainingBatch,
    TrainingSchedule,
    TrainLossMonitor,
    batch_count,
    epoch_mean_losses,
    train_segmentation,
)

CONTEXT_INIT_STD = 0.02  # spec §1.4: context vectors ~ N(0, 0.02²)
STATE_TEMPLATES = ("{}", "damaged {}")  # normal, abnormal (spec §1.4)
PLACEHOLDER = "X"


class LearnablePrompts(nn.Module):
    """Class-agnostic dual CoOp prompts (spec §1.4).

    Sentences ``"X X … X object."`` and ``"X X … X damaged object."`` (``length`` placeholders) are
    tokenised once; at each call the placeholder embeddings (positions 1..length, after SOT) are
    replaced by the learnable ``context`` ``[2, length, text_width]`` (row 0 normal, row 1 abnormal,
    independent vectors), the rest stays the frozen token embedding.
    """

    def __init__(self, clip: ClipBackbone, length: int = 12, object_name: str = "object") -> None:
        super().__init__()
        sentences = [" ".join([PLACEHOLDER] * length + [state.format(object_name)]) + "." for state in STATE_TEMPLATES]
        token_ids = clip.tokenizer(sentences)
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.context = nn.Parameter(torch.randn(len(STATE_TEMPLATES), length, clip.text_width) * CONTEXT_INIT_STD)

    def embeddings(self, clip: ClipBackbone) -> torch.Tensor:
        """``[2, context_length, text_width]``: SOT, learnable context, frozen suffix (state words, EOT, padding)."""
        frozen = clip.token_embedding(self.token_ids)
        length = self.context.shape[1]
        return torch.cat([frozen[:, :1], self.context.to(frozen.dtype), frozen[:, 1 + length :]], dim=1)

    def forward(self, clip: ClipBackbone) -> torch.Tensor:
        """``[2, embed_dim]`` un-normalised text features (EOT -> ln_final -> text_projection)."""
        return clip.encode_prompt_embeddings(self.embeddings(clip), clip.eot_positions(self.token_ids))


class SOWAOutput(NamedTuple):
    """One forward pass: image logits ``z/T`` ``[B, 2]``, per-layer state probabilities
    ``[B, 2, S, S]``, and per layer the raw tap patch tokens ``[B, T, width]`` and the adapted,
    projected tokens ``[B, T, embed_dim]``."""

    image_logits: torch.Tensor
    layer_probabilities: list[torch.Tensor]
    patches: list[torch.Tensor]
    adapted: list[torch.Tensor]


class SOWA(AnomalyMethod):
    """SOWA with the reference code's defaults (spec §1–§3); see the module docstring for switches.

    backbone: a built :class:`ClipBackbone` or an open_clip / tiny model name; ``pretrained``: an
        open_clip tag (``"openai"`` -> ``ViT-L-14-336px.pt``) or None (random); ``backbone_checkpoint``:
        a local file of the CLIP weights instead of the tag.
    taps: 0-based tapped blocks. adapter: ``"hfwa"`` (§1.3) or ``"linear"`` — one bias-free
        Linear(width, width) per layer in its place, as ``model/sowa_linear.yaml`` (§4.8; that config
        also drops the text Linear: ``text_linear=False``). window, depth, num_heads, cpb_hidden,
        value_only, attn_drop: HFWA options (§1.3). prompt_length: context vectors per state (§1.4).
    smoothing_sigma: Gaussian σ on the zero-shot map (0 disables; §1.7). temperature: image-score
        softmax temperature (§1.6).
    Training (§2): epochs, batch_size, learning_rate, weight_decay (AdamW), seed, mosaic_rate (the
    rate of 2×2 mosaics; the reference's depends on the auxiliary dataset, 0.2 on MVTec AD and none on
    VisA: study protocol, in :data:`sowa_lib.profiles.AUXILIARY_TRAINING`, which the runner applies;
    needed by :meth:`fit` only).
    checkpoint: trained weights to load — the authors' released Lightning checkpoint (a path, or a
        name of :data:`~sowa_lib.methods.official_weights.REGISTRY` such as ``"sowa/visa"``; its
        frozen CLIP is loaded too) or a file of our own ``trainable_state_dict``.
    """

    name = "sowa"
    normalization = "clip"
    training_data = "auxiliary"
    cached = ("memory",)
    inference_options = frozenset({"smoothing_sigma", "memory_features", "image_score"})
    caches_training_encodings = True  # one epoch (§2.4): every variant's training meets the same seeded batches
    profiles = {
        "demo": {
            **DEMO_TAPPED_CLIP,
            "window": 4,
        },
    }

    def __init__(
        self,
        backbone: ClipBackbone | str = "ViT-L-14-336",
        pretrained: str | None = "openai",
        *,
        backbone_checkpoint: str | None = None,
        image_size: int = 336,
        quick_gelu: bool = True,
        round_fp16: bool = True,
        taps: Sequence[int] = (5, 11, 17, 23),
        adapter: str = "hfwa",
        window: int = 12,
        depth: int = 1,
        num_heads: int = 8,
        cpb_hidden: int = 64,
        value_only: bool = True,
        attn_drop: float = 0.1,
        in_proj_bias: bool = False,
        linear_residual: bool = True,
        logit_scale: str = "learned",
        position_bias: str = "continuous",
        out_proj: bool = True,
        share_adapters: bool = False,
        patch_ln_post: bool = False,
        prompt_length: int = 12,
        text_linear: bool = True,
        temperature: float = 0.07,
        smoothing_sigma: float = 4.0,
        memory_features: str = "raw",
        image_score: str = "transductive_minmax",
        image_loss: str = "ce_on_probs",
        train_mask_threshold: float = 0.0,
        mosaic_rate: float | None = None,
        mosaic_label_fix: bool = False,
        epochs: int = 1,
        batch_size: int = 8,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.2,
        lr_schedule: str = "plateau",
        keep_checkpoint: str = "best_train_loss",
        early_stopping_patience: int = 10,
        seed: int = 2025,
        checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        check_choice("lr_schedule", lr_schedule, ("plateau", "none"))
        check_choice("keep_checkpoint", keep_checkpoint, ("best_train_loss", "last"))
        self.lr_schedule, self.keep_checkpoint, self.early_stopping_patience = lr_schedule, keep_checkpoint, early_stopping_patience
        check_choice("adapter", adapter, ("hfwa", "linear"))
        check_choice("memory_features", memory_features, ("raw", "adapted"))
        check_choice("image_score", image_score, IMAGE_SCORE_MODES)
        check_choice("image_loss", image_loss, ("ce_on_probs", "ce"))
        self.clip = as_backbone(backbone, pretrained, checkpoint=backbone_checkpoint, image_size=image_size, quick_gelu=quick_gelu,
                                round_fp16=round_fp16)
        self.image_size = self.clip.image_size
        self.taps = tuple(taps)
        self.temperature = temperature
        self.smoothing_sigma = smoothing_sigma
        self.patch_ln_post = patch_ln_post
        self.memory_features = memory_features
        self.image_score = image_score
        self.image_loss = image_loss
        self.train_mask_threshold = train_mask_threshold
        self.mosaic_rate, self.mosaic_label_fix = mosaic_rate, mosaic_label_fix
        self.epochs, self.batch_size, self.learning_rate, self.weight_decay, self.seed = epochs, batch_size, learning_rate, weight_decay, seed
        options = WindowOptions(
            num_heads=num_heads, cpb_hidden=cpb_hidden, value_only=value_only, attn_drop=attn_drop, in_proj_bias=in_proj_bias,
            linear_residual=linear_residual, logit_scale=logit_scale, position_bias=position_bias, out_proj=out_proj,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.adapters = nn.ModuleList(self._build_adapters(adapter, window, depth, options, share_adapters))
            self.prompts = LearnablePrompts(self.clip, prompt_length)
            dim = self.clip.embed_dim
            self.text_linear = nn.Linear(dim, dim) if text_linear else nn.Identity()
        self.memory = MemoryBank(metric="cosine")
        self._text_cache: tuple[tuple, torch.Tensor] | None = None
        if checkpoint is not None:  # trained weights: the authors' released file or ours (official_weights)
            load_trained_weights(self, checkpoint)

    def frozen_forward(self, images: torch.Tensor) -> Any:
        """The frozen CLIP image encoder's plain forward (what :mod:`sowa_lib.speed` compares to)."""
        return self.clip.encode_image(images)

    @property
    def weights_id(self) -> str:
        return self.clip.weights_id

    def _build_adapters(self, kind: str, window: int, depth: int, options: WindowOptions, shared: bool) -> list[nn.Module]:
        """One adapter per tapped layer (§1.3, or ``sowa_linear``'s bias-free Linear); ``shared`` ties
        their learnable weights (§5.4.3)."""
        if kind == "linear":
            linears = [nn.Linear(self.clip.width, self.clip.width, bias=False) for _ in self.taps]
            return [linears[0]] * len(linears) if shared else linears
        adapters = [HFWAAdapter(self.clip.blocks[i].attn, self.clip.grid_size, window, depth, options) for i in self.taps]
        if shared:
            share_trainable_parts(adapters)
        return adapters

    # ---------------------------------------------------------------- forward pieces
    def text_features(self) -> torch.Tensor:
        """``[2, embed_dim]`` L2-normalised (normal, abnormal) features after the text Linear (§1.5).

        They depend on the learned weights only, so without autograd they are computed once and
        reused until a text-side tensor is modified in place (training, loading) or moved.
        """
        if torch.is_grad_enabled():
            return self._encode_text()
        key = tuple((p.data_ptr(), p._version) for p in self._text_tensors())
        if self._text_cache is None or self._text_cache[0] != key:
            self._text_cache = (key, self._encode_text())
        return self._text_cache[1]

    def _encode_text(self) -> torch.Tensor:
        return F.normalize(self.text_linear(self.prompts(self.clip)), dim=-1)

    def _text_tensors(self) -> list[torch.Tensor]:
        return [*self.prompts.parameters(), *self.text_linear.parameters(), self.clip.token_embedding.weight]

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Width-``W`` tokens -> joint space by the frozen ``visual.proj`` (no ``ln_post`` by default, §1.2)."""
        if self.patch_ln_post:
            tokens = self.clip.visual.ln_post(tokens)
        return tokens @ self.clip.visual.proj

    def forward(self, images: torch.Tensor) -> SOWAOutput:
        """Normalised images ``[B, 3, S, S]`` -> :class:`SOWAOutput` (spec §1.2–§1.6). The CLIP is
        frozen, so its pass needs no graph, also in training (where it may then be served by the
        feature cache: ``caches_training_encodings``)."""
        with torch.no_grad():
            cls_embedding, tapped = self.clip.encode_image(images, taps=self.taps)
        patches = [tokens[:, 1:] for tokens in tapped]
        adapted = [self.project(adapter(p)) for adapter, p in zip(self.adapters, patches)]
        text = self.text_features()
        image_logits = F.normalize(cls_embedding, dim=-1) @ text.T / self.temperature
        probabilities = [self.layer_probabilities(tokens, text) for tokens in adapted]
        return SOWAOutput(image_logits, probabilities, patches, adapted)

    def memory_tokens(self, out: SOWAOutput) -> list[torch.Tensor]:
        """Per-layer tokens of the few-shot memory (§1.8): raw taps through ``visual.proj`` (code),
        or the adapted tokens (``memory_features="adapted"``, Fig. 4)."""
        if self.memory_features == "adapted":
            return out.adapted
        return [self.project(p) for p in out.patches]

    def layer_probabilities(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Per-layer map (§1.5): cosine to the 2 text features -> grid -> bilinear upsample with
        ``align_corners=True`` -> softmax over the states; ``[B, 2, S, S]``."""
        cosine = F.normalize(tokens, dim=-1) @ text.T
        logits = resize_maps(tokens_to_grid(cosine), self.image_size, align_corners=True)
        return logits.softmax(dim=1)

    # ---------------------------------------------------------------- inference
    def set_references(self, images: torch.Tensor, category: str, context: RunContext | None = None) -> None:
        """K-shot memory of the references' per-layer tokens (raw by default, §1.8); K = 0 clears it."""
        if not len(images):
            self.memory.clear()
            return
        with torch.no_grad():
            self.memory.set(self.memory_tokens(self(images)))

    def predict(self, images: torch.Tensor, category: str) -> Prediction:
        """Zero-shot map = σ-smoothed sum of the abnormal probabilities (§1.7); with references, plus
        the summed upsampled memory distances, unsmoothed (§1.8). Scores = p[abnormal] (§1.6); the
        few-shot fusion with the map maxima happens in :meth:`finalize_category`."""
        out = self(images)
        maps = gaussian_blur(torch.stack([p[:, 1] for p in out.layer_probabilities]).sum(dim=0), self.smoothing_sigma)
        scores = out.image_logits.softmax(dim=-1)[:, 1]
        extras: dict[str, torch.Tensor] = {}
        if len(self.memory):
            maps = maps + memory_distance_map(self.memory, self.memory_tokens(out), self.image_size)
            extras = few_shot_extras(scores, maps)
        return Prediction(scores.float().cpu(), maps.float().cpu(), {k: v.float().cpu() for k, v in extras.items()})

    def finalize_category(self, pred: Prediction) -> Prediction:
        """Few-shot image score 0.5·p + 0.5·min-max over the category of the map maxima (§1.8)."""
        return finalize_few_shot(pred, self.image_score)

    # ---------------------------------------------------------------- training
    def training_loss(self, batch: TrainingBatch) -> torch.Tensor:
        """``L_ce + Σ_l focal(M_l) + Σ_l [dice(M_l[abn], G) + dice(M_l[norm], 1 - G)]`` (§2.2).

        ``image_loss="ce_on_probs"`` feeds the already-softmaxed probabilities to CrossEntropy as the
        code does (double softmax); ``"ce"`` feeds the logits z/T.
        """
        out = self(batch.images)
        logits = out.image_logits.softmax(dim=-1) if self.image_loss == "ce_on_probs" else out.image_logits
        loss = F.cross_entropy(logits, batch.labels)
        for probabilities in out.layer_probabilities:
            loss = loss + focal_loss(probabilities, batch.masks)
            loss = loss + dice_loss(probabilities[:, 1], batch.masks) + dice_loss(probabilities[:, 0], 1.0 - batch.masks)
        return loss

    def fit(self, samples: Sequence[Sample], context: RunContext = RunContext()) -> dict[str, Any]:
        """Train adapters, prompts and text Linear on the auxiliary samples (§2): AdamW(lr 1e-3,
        wd 0.2), batch 8, ``epochs`` epochs, seed 2025 (``context.seed`` when given); 2×2 mosaics at
        ``mosaic_rate``. ``lr_schedule`` and ``keep_checkpoint`` act on each epoch's mean loss (module
        docstring). Resumes from the last epoch checkpoint in ``context.checkpoint_dir``."""
        if self.mosaic_rate is None:
            raise ValueError("SOWA trains with mosaic_rate=: pass it (the reference's is 0.2 on MVTec AD, 0.0 on VisA; "
                             "the runner applies sowa_lib.profiles.AUXILIARY_TRAINING)")
        seed = self.seed if context.seed is None else context.seed
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.learning_rate, weight_decay=self.weight_decay)
        checkpoints = EpochCheckpoints(context.checkpoint_dir)
        best = self.keep_checkpoint == "best_train_loss"
        monitor = TrainLossMonitor(optimizer, self.lr_schedule == "plateau", stop_patience=self.early_stopping_patience if best else None)
        steps_per_epoch = batch_count(len(samples), self.batch_size)
        start_epoch, losses, stopped = 0, [], False
        if (resume := checkpoints.latest()) is not None:
            for epoch, mean in enumerate(epoch_mean_losses(resume["losses"], steps_per_epoch)):  # replayed before the saved lr is restored
                stopped = monitor.update(epoch, mean)
            self.load_trainable_state_dict(resume["state"])
            optimizer.load_state_dict(resume["optimizer"])
            start_epoch, losses = resume["epoch"] + 1, list(resume["losses"])
        schedule = TrainingSchedule(
            epochs=self.epochs, batch_size=self.batch_size, mosaic_rate=self.mosaic_rate, seed=seed,
            mask_threshold=self.train_mask_threshold, mosaic_label_fix=self.mosaic_label_fix,
        )
        was_training = self.training
        self.train()

        def end_epoch(epoch: int, so_far: list[float]) -> bool:
            checkpoints.save(epoch, self.trainable_state_dict(), optimizer, losses + so_far)
            torch.manual_seed(seed + epoch + 1)
            return monitor.update(epoch, sum(so_far[-steps_per_epoch:]) / len(so_far[-steps_per_epoch:]), self.trainable_state_dict)

        # Attention-dropout draws are seeded per epoch so that a resumed fit equals an uninterrupted one.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed + start_epoch)
            if not stopped:
                losses += train_segmentation(
                    samples, self.training_loss, optimizer, schedule, image_size=self.image_size,
                    normalization=self.normalization, device=self.device, start_epoch=start_epoch, progress=context.progress,
                    on_epoch_end=end_epoch,
                )
        last_epoch = len(losses) // steps_per_epoch - 1
        if best and monitor.best_epoch != last_epoch:
            self.load_trainable_state_dict(monitor.best_state if monitor.best_state is not None else checkpoints.load(monitor.best_epoch)["state"])
        self.train(was_training)
        return {"loss": losses, "mosaic_rate": schedule.mosaic_rate, "samples": len(samples), "kept_epoch": monitor.best_epoch if best else last_epoch}

