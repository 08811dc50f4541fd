"""Every ablation knob and fidelity switch the study measures, as data (DESIGN.md, "Fidelity
switches"; issue: notebook 04).

An :class:`Ablation` is a named variant of a method (constructor overrides) run in one setting; the
ablation notebook runs each beside the method's default and reports the difference. ``kind`` says
what it is: ``"knob"`` (a paper's own ablation, e.g. SOWA's window size or AGPNet's Tables 5–8) or
``"switch"`` (a documented departure of a reference implementation from its paper) or ``"metric"``
(the same predictions scored with another AUPRO definition). AGPNet variants are named like the
claims of its Tables 5–8 so that `06_tables` can set them beside the paper.

The demo profile's sizes differ from the paper's (a tiny 4-block CLIP on an 8×8 token grid), so
window sizes and layer indices are given per profile.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sowa_lib.methods.official_weights import SMOKE_PREFIX, official_name
from sowa_lib.profiles import PAPER_AUXILIARY, dataset_for_role


@dataclass(frozen=True)
class Ablation:
    method: str
    variant: str
    overrides: dict[str, Any]
    setting: str
    kind: str
    shots: tuple[int, ...] = (0,)
    aupro_variant: str = "mvtec"
    note: str = ""
    table: str = ""  # the paper table it reproduces, when it is one
    dataset_role: str = ""  # run on the dataset playing this role ("visa": trained on the MVTec role) instead of the default target


def _sowa(profile: str) -> list[Ablation]:
    """SOWA's knobs with the values its authors searched (spec sowa §4.8, §6.6) and every fidelity
    switch (§5.4). The demo's tiny CLIP has an 8×8 token grid (default window 4) and 4 blocks (taps
    0–3), so its windows and layer sets are the same ideas at that size: half/global window,
    first+middle+last and inner blocks."""
    demo = profile == "demo"
    windows = (2, 8) if demo else (6, 24)  # default 4 (demo) / 12 (paper); the largest = one global window
    layer_sets = ((0, 1, 3), (1, 2)) if demo else ((0, 11, 23), (6, 12, 18))  # default: all taps / (5, 11, 17, 23)
    prompt_lengths = (8, 24) if demo else (8, 16, 24)  # default 12
    knobs = [Ablation("sowa", f"window={w}", {"window": w}, "zero_shot", "knob") for w in windows]
    # variant names keep the study's published labels (runs, tables); the option is ``taps``
    knobs += [Ablation("sowa", f"layers={','.join(map(str, taps))}", {"taps": taps}, "zero_shot", "knob") for taps in layer_sets]
    knobs += [Ablation("sowa", f"prompt_length={n}", {"prompt_length": n}, "zero_shot", "knob") for n in prompt_lengths]
    knobs += [Ablation("sowa", f"attn_drop={p}", {"attn_drop": p}, "zero_shot", "knob") for p in (0.0, 0.2)]  # default 0.1
    knobs += [
        Ablation("sowa", "depth=2", {"depth": 2}, "zero_shot", "knob", note="adds a shifted-window block"),
        Ablation("sowa", "epochs=5", {"epochs": 5}, "zero_shot", "knob", note="the other value of the authors' search"),
        Ablation("sowa", "sowa_linear", {"adapter": "linear", "text_linear": False}, "zero_shot", "knob",
                 note="model/sowa_linear.yaml: a bias-free Linear per layer instead of HFWA, no text Linear"),
        Ablation("sowa", "qk_attention", {"value_only": False}, "zero_shot", "knob", note="Q–K attention instead of value-only"),
        Ablation("sowa", "position_bias=none", {"position_bias": "none"}, "zero_shot", "knob"),
        Ablation("sowa", "no_smoothing", {"smoothing_sigma": 0.0}, "zero_shot", "knob"),
        Ablation("sowa", "no_text_linear", {"text_linear": False}, "zero_shot", "knob"),
    ]
    switches = [
        Ablation("sowa", "image_loss=ce", {"image_loss": "ce"}, "zero_shot", "switch", note="CE on logits instead of on probabilities"),
        Ablation("sowa", "share_adapters", {"share_adapters": True}, "zero_shot", "switch",
                 note="the config's share_weight: true, which the code ignores"),
        Ablation("sowa", "linear_residual=False", {"linear_residual": False}, "zero_shot", "switch", note="Fig. 2(b): no second residual"),
        Ablation("sowa", "in_proj_bias", {"in_proj_bias": True}, "zero_shot", "switch"),
        Ablation("sowa", "logit_scale=fixed", {"logit_scale": "fixed"}, "zero_shot", "switch", note="attention scale fixed at 10"),
        Ablation("sowa", "position_bias=table", {"position_bias": "table"}, "zero_shot", "switch",
                 note="Fig. 2(c): a learnable relative position bias table (Swin-V1) instead of Swin-V2's MLP"),
        Ablation("sowa", "out_proj=False", {"out_proj": False}, "zero_shot", "switch", note="Fig. 2(c) draws no output projection"),
        Ablation("sowa", "patch_ln_post", {"patch_ln_post": True}, "zero_shot", "switch", note="ln_post before visual.proj for patch tokens"),
        Ablation("sowa", "train_mask_threshold=0.5", {"train_mask_threshold": 0.5}, "zero_shot", "switch",
                 note="training masks binarised as at test time, not dilated"),
        Ablation("sowa", "mosaic_label_fix", {"mosaic_label_fix": True}, "zero_shot", "switch", dataset_role="visa",
                 note="the mosaic only runs when training on MVTec, i.e. for the VisA target"),
        Ablation("sowa", "fewshot_image_score=raw", {"image_score": "raw"}, "few_shot", "switch", (4,), note="no transductive min-max"),
        Ablation("sowa", "memory_features=adapted", {"memory_features": "adapted"}, "few_shot", "switch", (4,)),
        Ablation("sowa", "epochs=5,lr_schedule=none", {"epochs": 5, "lr_schedule": "none"}, "zero_shot", "switch",
                 note="no ReduceLROnPlateau; compare with epochs=5 (at the default 1 epoch the schedule is a no-op)"),
        Ablation("sowa", "epochs=5,keep_checkpoint=last", {"epochs": 5, "keep_checkpoint": "last"}, "zero_shot", "switch",
                 note="the last epoch's weights, no early stopping; compare with epochs=5"),
        Ablation("sowa", "aupro=cflow_loop", {}, "zero_shot", "metric", aupro_variant="cflow_loop"),
        Ablation("sowa", "aupro=sowa", {}, "zero_shot", "metric", aupro_variant="sowa", note="per-image-averaged FPR, as SOWA's code"),
    ]
    return knobs + switches


def _april_gan(profile: str) -> list[Ablation]:
    gpu_only = [] if profile == "demo" else [
        Ablation("april_gan", "precision=fp32", {"precision": "fp32"}, "zero_shot", "switch",
                 note="the reference runs CUDA fp16 autocast; no effect on a CPU"),
    ]
    return gpu_only + [
        Ablation("april_gan", "activation=quick_gelu", {"activation": "quick_gelu"}, "zero_shot", "switch",
                 note="the activation the OpenAI weights were trained with; the official 518-px path runs exact GELU"),
        Ablation("april_gan", "image_score=raw", {"image_score": "raw"}, "few_shot", "switch", (4,), note="no transductive min-max"),
        Ablation("april_gan", "references=without_replacement", {"reference_replacement": False}, "few_shot", "switch", (4,)),
        Ablation("april_gan", "dice_single_image_quirk=False", {"dice_single_image_quirk": False}, "zero_shot", "switch",
                 note="per-image Dice for a batch of one; differs only when the training set size is ≡ 1 mod 8"),
        Ablation("april_gan", "aupro=cflow_loop", {}, "zero_shot", "metric", aupro_variant="cflow_loop"),
    ]


def official_checkpoint(profile: str, method: str, target: str) -> str:
    """The ``checkpoint`` option of the authors' weights for ``target`` (paper, smoke): the file
    trained on its auxiliary dataset, or in the smoke its stand-in (``official_weights.SMOKE_PREFIX``)."""
    prefix = SMOKE_PREFIX if profile == "smoke" else ""
    return prefix + official_name(method, PAPER_AUXILIARY[target])


def _official_weights(profile: str) -> list[Ablation]:
    """The authors' released weights evaluated beside our training (issue 17): on each target, the
    checkpoint trained on its auxiliary dataset, as the official scripts pair them. The smoke
    profile reads stand-ins written in the same formats (``official_weights.SMOKE_PREFIX``); the
    demo has none. AGPNet released no weights."""
    if profile == "demo":
        return []
    return [Ablation(method, "official_weights", {"checkpoint": official_checkpoint(profile, method, target)}, "zero_shot",
                     "switch", dataset_role=target, note=f"the authors' released weights (trained on {PAPER_AUXILIARY[target]}) instead of ours")
            for method in ("april_gan", "sowa") for target in ("mvtec", "visa")]


def _winclip() -> list[Ablation]:
    """anomalib's choices (the defaults) against the WinCLIP paper's or the usual alternative
    (module docstring of :mod:`sowa_lib.methods.winclip`; issue #18)."""
    return [
        Ablation("winclip", "temperature=0.01", {"temperature": 0.01}, "zero_shot", "switch", note="logit scale 100 as caoyunkang/mala-lab"),
        Ablation("winclip", "no_class_name", {"use_class_name": False}, "zero_shot", "switch", note="'object' in every prompt"),
        Ablation("winclip", "templates=deduplicated", {"templates": "deduplicated"}, "zero_shot", "switch",
                 note="'a jpeg corrupted photo of a {}.' in place of anomalib's duplicate"),
        Ablation("winclip", "abnormal_states=with_broken", {"abnormal_states": "with_broken"}, "zero_shot", "switch",
                 note="the paper's five anomalous states, with 'broken'"),
        Ablation("winclip", "text_averaging=normalized", {"text_averaging": "normalize_mean_normalize"}, "zero_shot", "switch",
                 note="normalise each prompt embedding, average, normalise (usual CLIP ensemble)"),
        Ablation("winclip", "zero_shot_mean=arithmetic", {"zero_shot_mean": "arithmetic"}, "zero_shot", "switch",
                 note="arithmetic instead of harmonic mean of the image, 2×2 and 3×3 maps"),
        Ablation("winclip", "smoothing_sigma=4", {"smoothing_sigma": 4.0}, "zero_shot", "switch", note="Gaussian σ = 4 on the map"),
        Ablation("winclip", "upsample_align_corners", {"upsample_align_corners": True}, "zero_shot", "switch"),
        Ablation("winclip", "patch_layer=penultimate", {"patch_layer": "penultimate"}, "few_shot", "switch", (4,),
                 note="patch memory from the penultimate block, as the paper speaks of it"),
        Ablation("winclip", "few_shot_mean=harmonic", {"few_shot_mean": "harmonic"}, "few_shot", "switch", (4,),
                 note="harmonic instead of arithmetic mean of the patch, 2×2 and 3×3 maps"),
        Ablation("winclip", "fusion=harmonic", {"fusion": "harmonic"}, "few_shot", "switch", (4,),
                 note="zero- and few-shot map and score fused by a harmonic instead of an arithmetic mean"),
    ]


def _baselines() -> list[Ablation]:
    return [
        Ablation("patchcore", "coreset=0.1", {"full_bank_max_shots": 0}, "few_shot", "switch", (4,), note="the full-data 10% coreset even at K ≤ 4"),
        Ablation("padim", "covariance_ddof=0", {"covariance_ddof": 0}, "few_shot", "switch", (4,)),
    ]


def _agpnet(profile: str) -> list[Ablation]:
    demo = profile == "demo"
    # Table 5's columns image/feature in its order, less A/A (the default): -/-, R/-, -/R, R/R, A/-, -/A, A/R, R/A
    noise = [("none", "none"), ("random", "none"), ("none", "random"), ("random", "random"),
             ("attention", "none"), ("none", "attention"), ("attention", "random"), ("random", "attention")]
    random_image = "image R: a random region of the attention region's area (random_image_region='area', our choice)"
    runs = [Ablation("agpnet", f"img_noise={i},feat_noise={f}", {"image_noise": i, "feature_noise": f}, "multi_class", "knob", table="Table 5",
                     note=random_image if i == "random" else "")
            for i, f in noise]
    # (backbone, taps, note): taps None = the backbone's own default taps; the tiny CLIP has 4 blocks
    cnn_prior = "prior = activation attention (our choice, flagged)"
    backbones = {"backbone=wide_resnet50": ("tiny-resnet" if demo else "wide_resnet50_2", None, cnn_prior),
                 "backbone=clip_vit_b": ("tiny-clip-b16", (0, 1, 2, 3), "") if demo else ("ViT-B-16", None, "")}
    if not demo:
        backbones["backbone=efficientnet_b4"] = ("efficientnet_b4", None, cnn_prior)
    tiny_network = "demo: a tiny random network of the same family" if demo else ""
    runs += [Ablation("agpnet", name, {"backbone": b, "taps": taps}, "multi_class", "knob", table="Table 6",
                      note="; ".join(n for n in (note, tiny_network) if n)) for name, (b, taps, note) in backbones.items()]
    runs += [Ablation("agpnet", f"noise_intensity={s}", {"feature_noise_scale": s}, "multi_class", "knob", table="Table 7") for s in (0.5, 1.0, 1.5)]
    runs += [Ablation("agpnet", f"attention_map={letter}", {"mask_source": source}, "multi_class", "knob", table="Table 7",
                      note="letters inferred: D = DINO prior, L = learnable (teacher) mask")
             for letter, source in (("D", "prior"), ("L", "teacher"))]
    taps = {"deepest": (3,), "shallow+deepest": (0, 3), "middle+deepest": (2, 3)} if demo else {"deepest": (11,), "shallow+deepest": (2, 11), "middle+deepest": (5, 11)}
    runs += [Ablation("agpnet", f"multi_layer={name}", {"taps": t}, "multi_class", "knob", table="Table 8") for name, t in taps.items()]
    runs.append(Ablation("agpnet", "mean_teacher=without", {"mean_teacher": False}, "multi_class", "knob", table="Table 8"))
    vitad = {"fusion=False": ({"fusion": False}, "no Linear fusion before the decoder"),
             "weight_decay_params=all": ({"weight_decay_params": "all"}, "AdamW weight decay on every tensor, biases and norms included"),
             "grad_clip_norm=None": ({"grad_clip_norm": None}, "no gradient clipping"),
             "drop_last=False": ({"drop_last": False}, "the last partial batch is trained on"),
             "image_interpolation=bicubic": ({"image_interpolation": "bicubic"}, "bicubic image resize, as the other methods")}
    runs += [Ablation("agpnet", name, overrides, "multi_class", "switch", note=f"ViTAD's behaviour off: {note}")
             for name, (overrides, note) in vitad.items()]
    return runs


#: How a paper's ablation claims map onto runs: the setting its ablations were run in, and the claim
#: variants that *are* the method's default configuration (so its default runs answer them).
#: AGPNet §4.5: "on MVTec-AD under the multi-class setting"; Tables 5–8 each include the full model.
CLAIM_RUNS: dict[str, dict[str, Any]] = {
    "agpnet": {
        "setting": "multi_class",
        "default_variants": ("img_noise=attention,feat_noise=attention", "backbone=dino_vit_s", "noise_intensity=0-1.0",
                             "attention_map=B", "multi_layer=all", "mean_teacher=with"),
    },
}

def ablation_dataset(ablation: Ablation, profile: str, default: str) -> str:
    """The dataset an ablation runs on: its role's dataset in ``profile``, else ``default``."""
    return dataset_for_role(profile, ablation.dataset_role) if ablation.dataset_role else default


def ablations(profile: str) -> list[Ablation]:
    """All ablations of ``profile`` ("demo", "smoke" or "paper"; the smoke's are the paper's)."""
    return _sowa(profile) + _april_gan(profile) + _official_weights(profile) + _winclip() + _baselines() + _agpnet(profile)
