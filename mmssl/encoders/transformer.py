"""The pre-norm transformer block (arXiv:1706.03762, pre-norm as in ViT, arXiv:2010.11929) that the
ViT encoder, the MAE decoder and the causal context network all stack, and MAE's initialisation.

One class serves both attention patterns: full self-attention over patch tokens, and causal
self-attention over a sequence (token t sees tokens 1..t only, what CPC's context c_t needs,
arXiv:1807.03748). Both run through the fused ``scaled_dot_product_attention``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def init_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears with zero bias, LayerNorm weight 1 and bias 0.

    Xavier rather than PyTorch's default (kaiming-uniform with a = sqrt(5)) keeps the
    residual stream's scale about constant across depth at the start of training.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _SplitHeads(torch.autograd.Function):
    """qkv (B, N, 3 * h * d) -> q, k, v (B, h, N, d), views of the input.

    The same as a rearrange "b n (three h d) -> three b h n d", but the backward writes the three
    head gradients into one (B, N, 3, h, d) buffer in a single copy, where autograd's generic
    path stacks them and then copies the permuted stack again to undo the view.
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, heads: int):
        B, N, _ = qkv.shape
        q, k, v = qkv.view(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    @staticmethod
    def backward(ctx, gq: torch.Tensor, gk: torch.Tensor, gv: torch.Tensor):
        grad = torch.stack([g.transpose(1, 2) for g in (gq, gk, gv)], dim=2)  # (B, N, 3, h, d)
        return grad.flatten(2), None


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)). (B, N, D) -> (B, N, D).

    Parameters are named ``norm1``, ``qkv``, ``proj``, ``norm2``, ``mlp.0``, ``mlp.2`` for both
    patterns, so saved encoders of either kind load into it.

    Args:
        dim: token width D, divisible by ``heads``.
        heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        causal: token t attends to tokens <= t only (an autoregressive context).
        norm_eps: the LayerNorms' epsilon (MAE's 1e-6; PyTorch's default 1e-5 where a network was
            trained with it).
        mae_init: MAE's initialisation (``init_weights``); False keeps PyTorch's defaults.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, causal: bool = False,
                 norm_eps: float = 1e-6, mae_init: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.causal = heads, causal
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=norm_eps), nn.LayerNorm(dim, eps=norm_eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        # Stochastic depth while training (fine-tuning sets it): each sample skips a residual branch with
        # this probability, the kept ones scaled by 1 / (1 - p). 0 leaves the block deterministic.
        self.drop_path = 0.0
        if mae_init:
            init_weights(self)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention (causal when the block is) of already normalised tokens
        (B, N, D) -> (B, N, D)."""
        q, k, v = _SplitHeads.apply(self.qkv(x), self.heads)  # (B, h, N, d) each
        # The fused kernel never materialises the (N, N) attention matrix per head.
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, h, N, d)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.branch(self.attention(self.norm1(x)))
        return x + self.branch(self.mlp(self.norm2(x)))

    def branch(self, y: torch.Tensor) -> torch.Tensor:
        """A residual branch's output (B, ...), dropped per sample at rate ``drop_path`` while training."""
        if not (self.training and self.drop_path > 0):
            return y
        keep = 1.0 - self.drop_path
        mask = torch.empty((y.shape[0],) + (1,) * (y.ndim - 1), device=y.device, dtype=y.dtype).bernoulli_(keep)
        return y * mask / keep
