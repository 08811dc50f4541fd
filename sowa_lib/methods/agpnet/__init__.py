"""AGPNet: attention-guided perturbation for feature reconstruction (spec ``agpnet``; paper
arXiv 2408.07490, ``papers/003_694cbe08c2115663.txt``).

No official code exists and the exported paper lost its equations, so each value below carries its
source: **[P]** stated in the paper text, **[V]** inherited from ViTAD (ADer code,
datasets_metrics_agpnet §1.5), *not* stated by AGPNet, **[?]** our choice where both are silent.

Reconstruction branch (kept at inference), spec §1:
    F = Σ_l LN(f_l)                       frozen extractor taps, LayerNorm-ed one by one, summed (eq. 1) [P]
    F̂ = Decoder(Fusion(F))                Linear fusion [V], 4 plain ViT blocks [P], learnable position embedding [V]
    map = blur_σ(up(d(F, F̂)))             d = 1 − cos per token [V] (L2 option), bilinear up [P], σ = 4 [V]
    score = max(avg_pool_16(map))          max of the average-pooled map [P], 16×16 window, stride 1 [V]
Perturbation branch (training only), spec §2:
    A = Norm(mean(Norm(A_prior), Norm(A_teacher)))      prior: extractor CLS attention [P]; teacher:
                                                         EMA decoder's attention [P]; the combination [?]
    F̃ = F + λ(t)·γ·Norm(A) ⊙ ε,  ε ~ N(0, I)            eq. 4 [P]; λ: 0 → 1 over epochs 1–400 of 500 [P]
    x̃ = x + σ_img·top_r(up(A)) ⊙ ε′                      r: 0.6 → 1 over epochs 100–400 [P]; σ_img = 1 [?]
    L = L_f + L_if = d(Dec(F̃), F) + d(Dec(F̃(x̃)), F)    eqs. 6–7 [P]; d = flat 1 − cos per sample [V]

Every [V] and [?] value is listed, with its current value, by :func:`~sowa_lib.methods.agpnet.unstated.unstated_values` (notebook 03).
ViTAD's training details are options with ViTAD's behaviour as default (issue #18; the paper is
silent on all five): ``fusion`` (a learnable ``Linear(C, C)`` before the decoder, ADer
``model/vitad.py``), ``weight_decay_params`` (AdamW decay only on ≥ 2-D non-bias tensors, ADer
``optim/__init__.py``), ``grad_clip_norm`` (5.0, ``cfg_common.py``), ``drop_last`` (the training
loader drops the last partial batch) and ``image_interpolation`` (bilinear image resize,
``vitad_mvtec.py``; the runner reads :attr:`AGPNet.interpolation`).

Efficiency (Table 9's learnable parameters and GFLOPs, in ``claims/agpnet.csv``): the spec's decoder,
4 ViT-S blocks (dim 384) at the timm/ViTAD MLP ratio 4 [V], has 4 × 1.77 M + 0.1 M (position
embedding) = 7.2 M parameters, 7.3 M with ViTAD's fusion Linear, and 3.6 GFLOPs at 256 px; the
paper's count fits no documented configuration. ``decoder_mlp_ratio`` is an option so the count can
be matched; the default stays the spec's 4. :func:`~sowa_lib.methods.agpnet.unstated.learnable_parameters` counts a
configuration.

The package: :mod:`~sowa_lib.methods.agpnet.model` (the method), :mod:`~sowa_lib.methods.agpnet.decoder`, :mod:`~sowa_lib.methods.agpnet.perturbation`
(schedules, noise masks, EMA, losses, few-shot augmentation), :mod:`~sowa_lib.methods.agpnet.extractor`
(which backbone tap adapter, :mod:`sowa_lib.backbones`), :mod:`~sowa_lib.methods.agpnet.unstated`
(the [V]/[?] table, Table 9's parameter count). Training runs on :mod:`sowa_lib.training`.
"""
from sowa_lib.methods.agpnet.model import AGPNet
from sowa_lib.methods.agpnet.unstated import TAGS, learnable_parameters, unstated_values

__all__ = ["AGPNet", "TAGS", "learnable_parameters", "unstated_values"]
