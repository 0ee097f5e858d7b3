"""CSDI's denoiser (Tashiro et al., NeurIPS 2021, §4.3 and Fig. 6): a residual stack of a transformer
over time and a transformer over features, conditioned on side information.

The architecture and initialisation follow the original code (``diff_models.py``, ``main_model.py``);
the computation is rearranged for speed and memory, with the same parameters and the same function:

* activations stay channel-last, ``(B, L, K, C)``: the 1x1 convolutions are ``nn.Linear`` layers
  (same parameter count) and neither transformer needs a permuted copy of its input;
* the transformer layers are a re-implementation of ``nn.TransformerEncoderLayer`` (post-norm,
  GELU, the same parameters) on ``scaled_dot_product_attention``, whose fused kernels never hold
  an ``(S x S)`` weight matrix (on CPU: when attention dropout is off, as in evaluation), so
  feature attention over K ~ 1000 series fits in memory;
* the side-information projection (a 1x1 convolution of ``[time embedding, feature embedding,
  cond_mask]``) is applied to its three parts separately, ``(B, L)``, ``(B, K)`` and ``(B, L, K)``,
  and broadcast, instead of to the ``(B, L, K, 145)`` concatenation that the original builds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tsdiffusion import kernels
from tsdiffusion.batch import Cond
from tsdiffusion.denoisers.layers import DiffusionStepEmbedding, gated_activation, time_sinusoids
from tsdiffusion.denoisers.protocol import Capabilities
from tsdiffusion.fill import interpolate

# (B, L, K, C) <-> the (batch, heads, sequence, head_dim) views that the attention kernels take.
# Views without copies of the (head, q/k/v, d)-ordered output of the q/k/v projection.
_TO_HEADS = {"L": "b l k h d -> b (k h) l d", "K": "b l k h d -> (b l) h k d"}
_FROM_HEADS = {"L": "b (k h) l d -> b l k (h d)", "K": "(b l) h k d -> b l k (h d)"}


class CSDITransformerLayer(nn.Module):
    """``nn.TransformerEncoderLayer(dim, heads, ff_dim, dropout, activation="gelu")`` (post-norm, the
    PyTorch default CSDI uses) along one axis of a channel-last ``(B, L, K, C)`` tensor.

    Parameters and their shapes are those of the PyTorch layer (``in_proj`` holds q, k, v stacked
    as ``self_attn.in_proj_weight`` does), so weights copy across one to one; the attention runs on
    ``F.scaled_dot_product_attention``.

    Args:
        dim: model width C.
        heads: attention heads; must divide ``dim``.
        axis: ``"L"`` attends over time (batch B*K), ``"K"`` over features (batch B*L).
        ff_dim: hidden width of the feed-forward block (CSDI: 64).
        dropout: dropout after attention, inside and after the feed-forward block.
        attention_dropout: dropout on the attention weights; ``None`` takes ``dropout`` (as PyTorch).
            A non-zero value in training selects the kernel that materialises the ``(S x S)`` weights.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        axis: Literal["L", "K"],
        ff_dim: int = 64,
        dropout: float = 0.1,
        attention_dropout: float | None = None,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"CSDITransformerLayer: heads={heads} must divide dim={dim}")
        if axis not in _TO_HEADS:
            raise ValueError(f"CSDITransformerLayer: axis must be 'L' or 'K', got {axis!r}")
        self.heads, self.axis, self.dropout = heads, axis, dropout
        self.attention_dropout = dropout if attention_dropout is None else attention_dropout
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.linear1 = nn.Linear(dim, ff_dim)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        # nn.MultiheadAttention's initialisation
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, L, K, C) -> (B, L, K, C)."""
        p = self.dropout if self.training else 0.0
        x = _add_norm(x, _dropout(self._attend(x), p), self.norm1)
        return _add_norm(x, _dropout(self.linear2(_dropout(F.gelu(self.linear1(x)), p)), p), self.norm2)

    def _attend(self, x: Tensor) -> Tensor:
        """Multi-head self-attention along ``self.axis``. x: (B, L, K, C) -> (B, L, K, C)."""
        # one GEMM for q, k and v (one autocast cast of x), its output channels ordered (head, q/k/v, d) so
        # that the head views below are strided views, not copies (the attention kernels read strides)
        weight = rearrange(self.in_proj.weight, "(n h d) c -> (h n d) c", n=3, h=self.heads)
        bias = rearrange(self.in_proj.bias, "(n h d) -> (h n d)", n=3, h=self.heads)
        qkv = rearrange(F.linear(x, weight, bias), "b l k (h n d) -> n b l k h d", n=3, h=self.heads)
        q, k, v = (rearrange(y, _TO_HEADS[self.axis]) for y in qkv.unbind(0))
        p = self.attention_dropout if self.training else 0.0
        if p > 0 and q.device.type == "cpu":
            out = _attention_with_dropout(q, k, v, p)
        elif q.device.type == "cpu" and q.dtype != torch.float32 and torch.is_grad_enabled():
            out = _float32_attention(q, k, v)
        elif (y := self._short_attention(q, k, v, x)) is not None:
            return self.out_proj(y)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.out_proj(rearrange(out, _FROM_HEADS[self.axis], b=x.shape[0], h=self.heads))

    def _short_attention(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor | None:
        """Without autograd on the CPU: :func:`tsdiffusion.kernels.short_attention` writing the heads straight into
        a (B, L, K, C) tensor (the out-projection's layout), or None where that kernel does not apply."""
        if not kernels.supports(q, k, v):
            return None
        y = torch.empty((*x.shape[:-1], self.heads * q.shape[-1]), dtype=q.dtype)
        view = rearrange(y, "b l k (h d) -> " + _TO_HEADS[self.axis].split("-> ")[1], h=self.heads)
        if view.data_ptr() != y.data_ptr() or view.shape != q.shape:  # pragma: no cover - rearrange copied
            return None
        return y if kernels.short_attention(q, k, v, out=view) is not None else None


class CSDILinearTransformerLayer(nn.Module):
    """The linear-attention transformer layer that CSDI's forecasting configuration uses (``is_linear: True``:
    ``LinearAttentionTransformer(dim, depth=1, heads)`` of the ``linear_attention_transformer`` package, the
    "efficient attention" of Shen et al., 2021) along one axis of a channel-last ``(B, L, K, C)`` tensor.

    Pre-norm: ``x + attn(norm1(x))``, then ``x + w2(gelu(w1(norm2(x))))`` with a ``4C`` hidden width. The
    attention of each head is ``softmax_d(q) / sqrt(d) @ (softmax_S(k)^T v)``: the softmax of the queries over
    the head's ``d`` channels and of the keys over the sequence, so the ``(d x d)`` context replaces the
    ``(S x S)`` weights and the cost is linear in the sequence length S. q, k and v have no bias; no dropout
    (the original's defaults). Parameter names map one to one on the original's (see
    :func:`convert_original_state_dict`).

    Args:
        dim: model width C.
        heads: attention heads; must divide ``dim``.
        axis: ``"L"`` attends over time, ``"K"`` over features.
        ff_mult: hidden width of the feed-forward block in multiples of ``dim`` (the original: 4).
    """

    def __init__(self, dim: int, heads: int, axis: Literal["L", "K"], ff_mult: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"CSDILinearTransformerLayer: heads={heads} must divide dim={dim}")
        if axis not in _TO_HEADS:
            raise ValueError(f"CSDILinearTransformerLayer: axis must be 'L' or 'K', got {axis!r}")
        self.heads, self.axis = heads, axis
        self.norm1 = nn.LayerNorm(dim)
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.to_out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.w1 = nn.Linear(dim, ff_mult * dim)
        self.w2 = nn.Linear(ff_mult * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, L, K, C) -> (B, L, K, C)."""
        x = x + self._attend(self.norm1(x))
        return x + self.w2(F.gelu(self.w1(self.norm2(x))))

    def _attend(self, x: Tensor) -> Tensor:
        """Linear attention along ``self.axis``. x: (B, L, K, C) -> (B, L, K, C)."""
        # q, k and v in one GEMM (the original's three parameters, concatenated per call: 3 C^2 values)
        weight = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight])
        q, k, v = rearrange(F.linear(x, weight), "b l k (n h d) -> n b l k h d", n=3, h=self.heads).unbind(0)
        q = q.softmax(dim=-1) * q.shape[-1] ** -0.5
        if self.axis == "L":  # one (d x d) context per (b, k, head), summed over time
            context = torch.einsum("blkhd,blkhe->bkhde", k.softmax(dim=1), v)
            out = torch.einsum("blkhd,bkhde->blkhe", q, context)
        else:  # one per (b, l, head), summed over features
            context = torch.einsum("blkhd,blkhe->blhde", k.softmax(dim=2), v)
            out = torch.einsum("blkhd,blhde->blkhe", q, context)
        return self.to_out(rearrange(out, "b l k h d -> b l k (h d)"))


def _add_norm(x: Tensor, r: Tensor, norm: nn.LayerNorm) -> Tensor:
    """``norm(x + r)``: in one pass by :func:`tsdiffusion.kernels.add_layer_norm` when sampling on the CPU."""
    out = kernels.add_layer_norm(x, r, norm)
    return norm(x + r) if out is None else out


def _float32_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``scaled_dot_product_attention`` in float32, returned in the inputs' dtype, for training on CPU under
    bf16 / fp16 autocast: there torch's fused CPU kernel is 5-12x slower forward + backward in bf16 than in
    float32 at CSDI's shapes (many short sequences, head width 8; torch 2.13 on a 2-core AMX Xeon,
    ``benchmarks/scripts/bench_cpu_attention.py``). Sampling (no grad) keeps bf16: at its batch sizes (thousands of
    sequences) the casts cost more than the bf16 forward loses, and the output is the same (the kernel
    accumulates in float32 and rounds to bf16 either way)."""
    with torch.autocast("cpu", enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)


def _attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, p: float) -> Tensor:
    """softmax(q k^T / sqrt(d)) with dropout p, times v: (N, H, S, d) -> (N, H, S, d).

    What ``scaled_dot_product_attention`` computes on CPU when dropout is on (its math kernel, the
    only one with dropout there), without that kernel's guard for fully masked rows (an ``isneginf``,
    ``all`` and ``where`` over the (S x S) weights: a tenth of a training step at CSDI's config). On the CPU the
    softmax and dropout are :func:`tsdiffusion.kernels.softmax_dropout` where it builds.
    """
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # (N, H, S, S)
    # one pass each way on the CPU, the weights written in the dtype the next matmul takes (no autocast cast)
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else v.dtype
    weights = kernels.softmax_dropout(scores, p, dtype)
    return torch.matmul(_dropout(scores.softmax(dim=-1), p) if weights is None else weights, v)


def _dropout(x: Tensor, p: float) -> Tensor:
    """``F.dropout(x, p, training=True)``, 2-4x as fast on CPU, where torch's random draws dominate.

    On CPU, each element is kept when a uniform 16-bit integer reaches a threshold, so the drop probability is
    ``p`` rounded to a multiple of 2^-16 (0.1 -> 0.100006) and the kept values are scaled by the inverse of the
    exact keep probability: by :func:`tsdiffusion.kernels.dropout` (one pass each way, the mask recomputed from a
    seed in the backward pass) where it builds, else four such integers per 64-bit draw of torch's generator.
    Elsewhere: ``F.dropout``.
    """
    n, drop = x.numel(), round(p * 65536)
    if p == 0.0:
        return x
    if x.device.type != "cpu" or not 0 < drop < 65536:
        return F.dropout(x, p, training=True)
    if (y := kernels.dropout(x, p)) is not None:
        return y
    bits = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    keep = bits.view(torch.int16)[:n].view(x.shape) >= drop - 32768  # P(keep) = 1 - drop / 2^16
    return torch.where(keep, x, 0.0).mul_(65536 / (65536 - drop))


@dataclass
class ChainSide:
    """One residual layer's side-information term for a whole sampling chain (:meth:`CSDIResidualLayer.chain_side`):
    ``full`` (B, L, K, 2C) with the mid-projection's bias, or the parts ``time`` (B, L, 1, 2C), ``feature``
    (B, 1, K, 2C), ``mask`` (B, L, K, 1) or None and its weight ``w_mask`` (2C,)."""

    full: Tensor | None
    time: Tensor | None
    feature: Tensor | None
    mask: Tensor | None
    w_mask: Tensor | None


class CSDIResidualLayer(nn.Module):
    """One residual layer of CSDI (Fig. 6): step embedding, time and feature transformers, side
    information, gated activation; returns ``((x + residual) / sqrt(2), skip)``.

    The 1x1 convolutions of the original are ``nn.Linear`` layers on channel-last tensors, with the
    original initialisation (Kaiming-normal weights).
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        diffusion_embedding_dim: int,
        side_dims: tuple[int, int, int],
        feedforward_dim: int,
        dropout: float,
        attention_dropout: float | None,
        attention: Literal["softmax", "linear"] = "softmax",
    ) -> None:
        super().__init__()
        self.side_dims = side_dims  # (time, feature, mask) widths of the side information
        self.diffusion_projection = nn.Linear(diffusion_embedding_dim, channels)
        self.cond_projection = _kaiming_linear(sum(side_dims), 2 * channels)
        self.mid_projection = _kaiming_linear(channels, 2 * channels)
        self.output_projection = _kaiming_linear(channels, 2 * channels)
        self.time_layer, self.feature_layer = (
            CSDITransformerLayer(channels, heads, axis, feedforward_dim, dropout, attention_dropout)
            if attention == "softmax"
            else CSDILinearTransformerLayer(channels, heads, axis)
            for axis in ("L", "K")
        )

    def forward(
        self, x: Tensor, step: Tensor, side: tuple[Tensor, Tensor, Tensor | None] | ChainSide
    ) -> tuple[Tensor, Tensor]:
        """x: (B, L, K, C); step: (B, E) or (1, E); side: time (B, L, T), feature (B, K, F), mask (B, L, K) or
        None, or their projection computed once per chain (:meth:`chain_side`).

        Returns the residual output and the skip output, both (B, L, K, C).
        """
        B, L, K, C = x.shape
        y = x + self.diffusion_projection(step)[:, None, None, :]
        if L > 1:
            y = self.time_layer(y)
        if K > 1:
            y = self.feature_layer(y)
        if isinstance(side, ChainSide) and side.full is not None:  # side + y W^T in the GEMM's own accumulator
            w = self.mid_projection.weight
            y = torch.addmm(side.full.view(-1, 2 * C), y.reshape(-1, C), w.t()).view(B, L, K, 2 * C)
        elif isinstance(side, ChainSide):
            y = self.mid_projection(y).add_(side.time).add_(side.feature)
            if side.mask is not None:
                y.addcmul_(side.mask, side.w_mask)
        else:
            y = self._add_side(self.mid_projection(y), side)  # (B, L, K, 2C)
        residual, skip = self.output_projection(gated_activation(y)).chunk(2, dim=-1)
        return (x + residual) / math.sqrt(2.0), skip

    def chain_side(self, side: tuple[Tensor, Tensor, Tensor | None], full_budget: int) -> ChainSide:
        """What this layer adds to ``mid_projection(y)``, computed once per sampling chain: the conditional
        projection of the side information plus both biases, as one (B, L, K, 2C) tensor if it takes at most
        ``full_budget`` bytes (then the GEMM adds it for free), else as its broadcastable parts."""
        time_emb, feature_emb, mask = side
        w_time, w_feature, w_mask = self.cond_projection.weight.split(self.side_dims, dim=1)
        t = F.linear(time_emb, w_time, self.cond_projection.bias).unsqueeze(2)  # (B, L, 1, 2C)
        f = F.linear(feature_emb, w_feature).unsqueeze(1)  # (B, 1, K, 2C)
        m = None if mask is None else mask.unsqueeze(-1)
        w = w_mask.squeeze(-1).to(t.dtype)
        B, L, _, D = t.shape
        if B * L * f.shape[2] * D * t.element_size() > full_budget:
            return ChainSide(None, t, f, m, w)
        full = (t + self.mid_projection.bias.to(t.dtype)) + f
        return ChainSide(full if m is None else full.addcmul_(m, w), None, None, None, None)

    def _add_side(self, y: Tensor, side: tuple[Tensor, Tensor, Tensor | None]) -> Tensor:
        """``y + cond_projection(concatenated side information)``, in place, one part at a time.

        y: (B, L, K, 2C), a fresh tensor that no backward needs -> (B, L, K, 2C)
        """
        time_emb, feature_emb, mask = side
        w_time, w_feature, w_mask = self.cond_projection.weight.split(self.side_dims, dim=1)
        y.add_(F.linear(time_emb, w_time, self.cond_projection.bias).unsqueeze(2))  # (B, L, 1, 2C)
        y.add_(F.linear(feature_emb, w_feature).unsqueeze(1))  # (B, 1, K, 2C)
        if mask is not None:
            y.addcmul_(mask.unsqueeze(-1), w_mask.squeeze(-1))  # (B, L, K, 1) * (2C,)
        return y


class CSDIDenoiser(nn.Module):
    """CSDI's denoiser (Tashiro et al., 2021): ``(x_t, t, cond) -> eps`` of shape (B, L, K).

    Input: ``[cond_obs, (1 - cond_mask) * x_t]`` as two channels (conditional model) or ``x_t``
    alone (``unconditional=True``, the paper's ablation, Table 2), 1x1 projection to C channels and
    ReLU; ``layers`` residual layers (:class:`CSDIResidualLayer`); skips summed and scaled by
    ``1/sqrt(layers)``, 1x1 projection, ReLU, 1x1 projection to one channel (zero-initialised weight).
    Side information: sinusoidal embedding of ``cond["timepoints"]``, a learned embedding looked up
    by ``cond["feature_ids"]`` (any subset of the ``num_features`` series), and ``cond["cond_mask"]``
    (conditional model only).

    The conditional model masks its inputs itself: values of ``cond["observed"]`` where
    ``cond_mask == 0`` and values of ``x_t`` where ``cond_mask == 1`` never reach the output.

    Args:
        num_features: number of distinct series (rows of the feature embedding).
        channels: residual channels C.
        layers: residual layers.
        heads: attention heads of both transformers.
        diffusion_embedding_dim: width of the diffusion-step embedding.
        time_embedding_dim: width of the sinusoidal time embedding.
        feature_embedding_dim: width of the feature embedding.
        feedforward_dim: feed-forward width of the transformer layers (CSDI: 64).
        dropout: dropout of the transformer layers (CSDI: PyTorch's default, 0.1).
        attention_dropout: dropout on the attention weights; ``None`` takes ``dropout``, as CSDI.
            0 lets training use the memory-efficient attention kernels (no ``(S x S)`` weights).
        unconditional: the unconditional ablation: input ``x_t`` only, no mask in the side information.
        attention: ``"softmax"``, the ``nn.TransformerEncoderLayer`` of CSDI's imputation configuration
            (:class:`CSDITransformerLayer`), or ``"linear"``, the linear-attention transformer of its
            forecasting configuration (:class:`CSDILinearTransformerLayer`; ``feedforward_dim``, ``dropout``
            and ``attention_dropout`` do not apply: the original has a ``4C`` feed-forward and no dropout).
        checkpointing: recompute each residual layer during the backward pass (``torch.utils.checkpoint``,
            same dropout draws): training keeps a quarter of the activations for a third more compute.
        lags: an extension, not in CSDI (default ``()``: the original model): for each lag ``d`` two more input
            channels, the conditioning values ``d`` steps earlier and their mask (zero where ``l < d`` or not
            conditioned on), as TimeGrad feeds lagged targets to its RNN. With ``lags=(24, 168)`` on hourly data
            every forecast step sees the same hour yesterday and last week directly instead of having to find
            them by attention over time embeddings. Conditional model only.
        interpolated_input: an extension, not in CSDI (default False: the original model): one more input
            channel, the conditioning values linearly interpolated along L into the positions not conditioned
            on (:func:`tsdiffusion.fill.interpolate`; constant beyond the first and last, 0 for a series with
            none), as PriSTI (Liu et al., ICDE 2023) feeds an interpolated series to its conditional feature
            module. The network starts from a dense estimate instead of having to find each missing value's
            neighbours by attention, which it learns slowly: the difference shows in short CPU budgets.
            Conditional model only.
    """

    def __init__(
        self,
        num_features: int,
        channels: int = 64,
        layers: int = 4,
        heads: int = 8,
        diffusion_embedding_dim: int = 128,
        time_embedding_dim: int = 128,
        feature_embedding_dim: int = 16,
        feedforward_dim: int = 64,
        dropout: float = 0.1,
        attention_dropout: float | None = None,
        unconditional: bool = False,
        attention: Literal["softmax", "linear"] = "softmax",
        checkpointing: bool = False,
        lags: Sequence[int] = (),
        interpolated_input: bool = False,
    ) -> None:
        super().__init__()
        if attention not in ("softmax", "linear"):
            raise ValueError(f"CSDIDenoiser: attention must be 'softmax' or 'linear', got {attention!r}")
        self.lags = tuple(int(d) for d in lags)
        if any(d < 1 for d in self.lags):
            raise ValueError(f"CSDIDenoiser: lags must be positive step counts, got {list(lags)}")
        if self.lags and unconditional:
            raise ValueError("CSDIDenoiser: lags are conditioning values; the unconditional model has none")
        if interpolated_input and unconditional:
            raise ValueError("CSDIDenoiser: interpolated_input fills conditioning values; unconditional has none")
        self.interpolated_input = bool(interpolated_input)
        self.num_features, self.unconditional, self.checkpointing = num_features, unconditional, checkpointing
        self.time_embedding_dim = time_embedding_dim
        side_dims = (time_embedding_dim, feature_embedding_dim, 0 if unconditional else 1)
        self.diffusion_embedding = DiffusionStepEmbedding(diffusion_embedding_dim)
        self.feature_embedding = nn.Embedding(num_features, feature_embedding_dim)
        inputs = 1 if unconditional else 2 + 2 * len(self.lags) + self.interpolated_input
        self.input_projection = _kaiming_linear(inputs, channels)
        self.residual_layers = nn.ModuleList(
            CSDIResidualLayer(
                channels,
                heads,
                diffusion_embedding_dim,
                side_dims,
                feedforward_dim,
                dropout,
                attention_dropout,
                attention,
            )
            for _ in range(layers)
        )
        self.output_projection1 = _kaiming_linear(channels, channels)
        self.output_projection2 = _kaiming_linear(channels, 1)
        nn.init.zeros_(self.output_projection2.weight)

    @property
    def capabilities(self) -> Capabilities:
        """Conditional unless built ``unconditional=True``; no labels, no ``features``."""
        return Capabilities(conditional=not self.unconditional)

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """x_t: (B, L, K) noisy series; t: (B,) long step; cond: see :class:`tsdiffusion.batch.Cond`.

        Uses ``cond["observed"]`` and ``cond["cond_mask"]`` (conditional model), ``cond["timepoints"]``
        (default ``0..L-1``) and ``cond["feature_ids"]`` (default ``0..K-1``). Returns (B, L, K).
        """
        mask = None if self.unconditional else _require(cond, "cond_mask").to(x_t.dtype)
        h = F.relu(self.input_projection(self._input(x_t, cond, mask)))  # (B, L, K, C)
        step = self.diffusion_embedding(t)  # (B, E)
        side = (*self._embeddings(x_t, cond), mask)
        skip: Tensor | float = 0.0
        for layer in self.residual_layers:
            if self.checkpointing and torch.is_grad_enabled():
                h, s = checkpoint(layer, h, step, side, use_reentrant=False)
            else:
                h, s = layer(h, step, side)
            skip = s + skip
        h = F.relu(self.output_projection1(skip / math.sqrt(len(self.residual_layers))))
        return self.output_projection2(h).squeeze(-1)

    # everything a chain's denoiser calls share is computed once if it takes at most this many bytes per layer
    chain_cache_bytes: int = 256 * 2**20

    def bind(self, cond: Cond) -> Callable[[Tensor, Tensor], Tensor]:
        """``(x_t, t) -> self(x_t, t, cond)`` for a sampling chain (no grad), with everything that depends only
        on ``cond`` computed on the first call and reused by every later one: the input projection of the
        conditioning channels, the mask, the time and feature embeddings and each layer's conditional
        projection of them (one (B, L, K, 2C) tensor per layer when it fits ``chain_cache_bytes``, added by
        the mid-projection GEMM). A step shared by all rows is embedded once. Same output as ``forward`` to
        float rounding (tests/denoisers/test_denoiser_csdi.py). A denoiser whose ``forward`` was replaced on the
        instance (``tsdiffusion.compile.compile_denoiser``), or one with forward hooks (a call counter, a profiler),
        is called through ``__call__`` instead, without the caches, so the hooks see every call."""
        if "forward" in vars(self) or self._forward_hooks or self._forward_pre_hooks:
            return lambda x_t, t: self(x_t, t, cond)
        cache: dict = {}

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            lowp = self._low_precision(x_t)
            key = (x_t.shape, x_t.dtype, x_t.device, torch.is_autocast_enabled(x_t.device.type), lowp)
            if cache.get("key") != key or torch.is_grad_enabled():
                cache.clear()
                if lowp is None:
                    cache.update(self._chain_cache(x_t, cond), key=key)
                else:  # the chain on a copy of the weights in ``lowp``, autocast off: no per-call weight casts
                    twin = self._low_precision_twin(lowp)
                    low_cond: Cond = {  # the same keys, floating values in lowp
                        k: v.to(lowp) if isinstance(v, Tensor) and v.is_floating_point() and k != "timepoints" else v
                        for k, v in cond.items()
                    }
                    with torch.autocast(x_t.device.type, enabled=False):
                        cache.update(twin._chain_cache(x_t.to(lowp), low_cond), key=key, twin=twin)
            if lowp is None:
                return self._chain_forward(x_t, t, cache)
            with torch.autocast(x_t.device.type, enabled=False):
                return cache["twin"]._chain_forward(x_t.to(lowp), t, cache).to(x_t.dtype)

        return denoise

    def _low_precision(self, x_t: Tensor) -> torch.dtype | None:
        """bfloat16 when a sampling chain runs on the CPU under bf16 autocast without grad (then :meth:`bind`
        runs it on a bf16 copy of the weights), else None. On the CPU autocast re-casts every weight at every
        call and keeps the activations between layers in float32: on a 2-core AMX Xeon the official PhysioNet
        checkpoint's 100-row call took 1.47 s under autocast, 1.22 s on bf16 weights, 2.54 s in float32
        (``benchmarks/scripts/bench_csdi_sampling.py``); the samples agree with autocast's to bf16 rounding."""
        dev = x_t.device.type
        if dev != "cpu" or torch.is_grad_enabled() or not torch.is_autocast_enabled(dev):
            return None
        dtype = torch.get_autocast_dtype(dev)
        return dtype if dtype == torch.bfloat16 and x_t.dtype == torch.float32 else None

    def _low_precision_twin(self, dtype: torch.dtype) -> CSDIDenoiser:
        """A copy of this denoiser in ``dtype``, made once and remade when a parameter or buffer changes
        (training steps bump their versions). Kept outside ``_modules``: not in the state dict, not moved by
        ``.to()``."""
        tensors = [*self.parameters(), *self.buffers()]
        key = (dtype, tuple((p.data_ptr(), p._version) for p in tensors))
        held = self.__dict__.get("_twin")
        if held is None or held[0] != key:
            self.__dict__.pop("_twin", None)
            held = (key, copy.deepcopy(self).to(dtype).eval().requires_grad_(False))
            self.__dict__["_twin"] = held
        return held[1]

    def _chain_cache(self, x_t: Tensor, cond: Cond) -> dict:
        mask = None if self.unconditional else _require(cond, "cond_mask").to(x_t.dtype)
        w, b = self.input_projection.weight, self.input_projection.bias
        if mask is None:  # the input is x_t alone
            base, w_x, free = b, w[:, 0], None
        else:  # every input channel but x_t's (channel 1) is fixed by the conditioning
            static = self._input(torch.zeros_like(x_t), cond, mask)
            keep = [i for i in range(static.shape[-1]) if i != 1]
            base, w_x, free = F.linear(static[..., keep], w[:, keep], b), w[:, 1], 1 - mask
        side = (*self._embeddings(x_t, cond), mask)
        layers = [layer.chain_side(side, self.chain_cache_bytes) for layer in self.residual_layers]
        return {"base": base, "w_x": w_x, "free": free, "layers": layers}

    def _chain_forward(self, x_t: Tensor, t: Tensor, cache: dict) -> Tensor:
        x = x_t if cache["free"] is None else cache["free"] * x_t
        h = F.relu(torch.addcmul(cache["base"], x.unsqueeze(-1), cache["w_x"].to(cache["base"].dtype)))
        same_step = t.numel() > 0 and bool((t == t[0]).all())
        step = self.diffusion_embedding(t[:1] if same_step else t)  # (1 or B, E)
        skip: Tensor | float = 0.0
        for layer, side in zip(self.residual_layers, cache["layers"]):
            h, s = layer(h, step, side)
            skip = s + skip
        h = F.relu(self.output_projection1(skip / math.sqrt(len(self.residual_layers))))
        return self.output_projection2(h).squeeze(-1)

    def _input(self, x_t: Tensor, cond: Cond, mask: Tensor | None) -> Tensor:
        """The model input, (B, L, K, 2 + 2 len(lags) [+ 1 interpolated]) conditional or (B, L, K, 1)
        unconditional."""
        if mask is None:
            return x_t.unsqueeze(-1)
        cond_obs = _require(cond, "observed") * mask
        channels = [cond_obs, (1 - mask) * x_t]
        for d in self.lags:
            channels += [lag_steps(cond_obs, d), lag_steps(mask, d)]
        if self.interpolated_input:
            channels.append(interpolate(cond_obs, mask))
        return torch.stack(channels, dim=-1)

    def _embeddings(self, x_t: Tensor, cond: Cond) -> tuple[Tensor, Tensor]:
        """Time embedding (B, L, T) and feature embedding (B, K, F) of the side information."""
        B, L, K = x_t.shape
        timepoints = cond.get("timepoints")
        if timepoints is None:
            timepoints = torch.arange(L, device=x_t.device).expand(B, L)
        feature_ids = cond.get("feature_ids")
        if feature_ids is None:
            if K > self.num_features:
                raise ValueError(
                    f"CSDIDenoiser: K={K} series but num_features={self.num_features}; pass cond['feature_ids']"
                )
            feature_ids = torch.arange(K, device=x_t.device).expand(B, K)
        time_emb = time_sinusoids(timepoints, self.time_embedding_dim).to(x_t.dtype)
        return time_emb, self.feature_embedding(feature_ids)


def lag_steps(x: Tensor, d: int) -> Tensor:
    """``out[:, l] = x[:, l - d]`` along dim 1 of (B, L, K), zero for ``l < d``."""
    out = torch.zeros_like(x)
    if d < x.shape[1]:
        out[:, d:] = x[:, : x.shape[1] - d]
    return out


def convert_original_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict of the original CSDI code (``CSDI_base``: ``embed_layer.*``, ``diffmodel.*``, as in
    its ``save/pretrained/model.pth``) -> one that :class:`CSDIDenoiser` loads with ``load_state_dict``.

    Renames the keys and drops the kernel dimension of the 1x1 convolutions. The PhysioNet checkpoint
    loaded this way reproduces the original model's output to 2e-6.
    """
    out = {}
    for key, value in state.items():
        key = key.removeprefix("diffmodel.").replace("embed_layer.", "feature_embedding.")
        key = key.replace(".layers.0.self_attn.in_proj_", ".in_proj.").replace(".layers.0.self_attn.", ".")
        key = key.replace("_layer.layers.0.", "_layer.")
        for old, new in _LINEAR_TRANSFORMER_KEYS.items():  # forecasting models (linear attention)
            key = key.replace(old, new)
        out[key] = value.squeeze(-1) if value.dim() == 3 else value
    return out


# LinearAttentionTransformer(depth=1) parameter names -> CSDILinearTransformerLayer's
_LINEAR_TRANSFORMER_KEYS = {
    "_layer.layers.layers.0.0.norm.": "_layer.norm1.",
    "_layer.layers.layers.0.0.fn.": "_layer.",
    "_layer.layers.layers.0.1.norm.": "_layer.norm2.",
    "_layer.layers.layers.0.1.fn.fn.": "_layer.",
}


def _kaiming_linear(in_features: int, out_features: int) -> nn.Linear:
    """The 1x1 ``Conv1d`` of the original as a Linear layer, Kaiming-normal weight (``Conv1d_with_init``)."""
    layer = nn.Linear(in_features, out_features)
    nn.init.kaiming_normal_(layer.weight)
    return layer


def _require(cond: Cond, key: str) -> Tensor:
    if key not in cond:
        raise KeyError(f"CSDIDenoiser: cond[{key!r}] is required by the conditional model (have {sorted(cond)})")
    return cond[key]
