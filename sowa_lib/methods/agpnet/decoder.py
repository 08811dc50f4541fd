"""AGPNet's reconstruction branch, the part it learns (spec agpnet §1): a plain ViT decoder."""
from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from sowa_lib.backbones.dino import explicit_attention


class ReconstructionDecoder(nn.Module):
    """Plain ViT decoder: ViTAD's fusion ``Linear(C, C)`` on the fused features (``fusion``) [V],
    learnable position embedding (no CLS) [V], ``depth`` pre-norm timm blocks (4 [P]; MLP ratio 4,
    qkv bias [V]), no final norm [V]. When the feature width differs from the decoder width (CNN
    backbones) linear in/out projections map between them, as UniAD does [?]. Every Linear, the
    fusion included, gets timm's ViT initialisation [?: ViTAD builds its fusion apart]."""

    def __init__(
        self, feature_dim: int, tokens: int, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, fusion: bool = True
    ) -> None:
        super().__init__()
        self.fusion = nn.Linear(feature_dim, feature_dim) if fusion else nn.Identity()
        self.in_proj = nn.Identity() if feature_dim == dim else nn.Linear(feature_dim, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.out_proj = nn.Identity() if feature_dim == dim else nn.Linear(dim, feature_dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():  # timm's ViT init, as ViTAD's timm-built decoder [V]
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(self.fusion(features)) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.out_proj(x)

    @torch.no_grad()
    def attention_received(self, features: torch.Tensor) -> torch.Tensor:
        """Learnable mask source ``[N, T]``: the attention each token receives as a key, averaged over
        queries, heads and blocks (the decoder has no CLS token to read a row from) [?]."""
        x = self.in_proj(self.fusion(features)) + self.pos_embed
        received = []
        for block in self.blocks:
            received.append(explicit_attention(block, x).mean(dim=(1, 2)))
            x = block(x)
        return torch.stack(received).mean(0)
