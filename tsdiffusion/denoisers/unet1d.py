"""A 1-D convolutional U-Net denoiser (Ronneberger et al. 2015; the DDPM U-Net of Ho et al. 2020, in 1-D).

The K features are the input channels and time is the convolution axis: ``x_t`` (B, L, K) becomes
(B, C, L). Down path: residual blocks then a stride-2 convolution per level; up path: nearest upsampling,
concatenated skip connections, residual blocks. Every residual block adds a projection of the diffusion
step embedding (DiffWave/CSDI's sinusoids, :class:`DiffusionStepEmbedding`) and, when ``num_classes > 0``,
of a learned class embedding (``cond["label"]``), as the DDPM U-Net adds its time embedding. Self-attention
is used at the lowest resolution only. Conditioning values ``cond["observed"]`` and ``cond["cond_mask"]``
enter as 2K extra input channels, so imputation and forecasting tasks can swap this network for the CSDI
transformer; for unconditional generation they are all zero.

Lengths that are not a multiple of ``2^(levels - 1)`` are right-padded with zeros and cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tsdiffusion.batch import Cond
from tsdiffusion.denoisers.layers import DiffusionStepEmbedding
from tsdiffusion.denoisers.protocol import Capabilities


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 when they divide ``channels`` (Wu & He 2018 use 32 for wide nets), else 1."""
    return 8 if channels % 8 == 0 else 1


class ResBlock1D(nn.Module):
    """GroupNorm-SiLU-Conv, + step/class embedding, GroupNorm-SiLU-Dropout-Conv, plus a (1x1) skip.

    x: (B, C_in, L), emb: (B, E) -> (B, C_out, L).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv1d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (Ho et al. 2020 code)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb).unsqueeze(-1)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention1D(nn.Module):
    """Pre-norm multi-head self-attention over time with a residual connection. x: (B, C, L) -> (B, C, L)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        h = rearrange(self.norm(x), "b c l -> b l c")
        h, _ = self.attn(h, h, h, need_weights=False)
        return x + rearrange(h, "b l c -> b c l")


class UNet1DDenoiser(nn.Module):
    """1-D U-Net with the common denoiser signature ``(x_t (B,L,K), t (B,), cond) -> (B,L,K)``.

    Args:
        num_features: K, input and output channels (linked from ``data.num_features``).
        channels: C, width of the first level.
        channel_mults: width multiplier per level; ``len(channel_mults)`` levels, each below the first halving L.
        blocks_per_level: residual blocks per level on the down path (the up path has one more, as DDPM).
        attention: self-attention at the lowest resolution (before and after the middle block).
        heads: attention heads (must divide the lowest level's width).
        num_classes: > 0 adds a class embedding looked up from ``cond["label"]`` (class-conditional generation);
            0 ignores labels.
        use_cond_channels: feed ``cond["observed"]`` and ``cond["cond_mask"]`` as 2K extra input channels
            (zeros when absent); False gives the unconditional network.
        diffusion_embedding_dim: width of the sinusoidal step encoding.
        dropout: dropout inside residual blocks.
    """

    def __init__(
        self,
        num_features: int,
        channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        blocks_per_level: int = 1,
        attention: bool = True,
        heads: int = 4,
        num_classes: int = 0,
        use_cond_channels: bool = True,
        diffusion_embedding_dim: int = 128,
        dropout: float = 0.0,
    ):
        super().__init__()
        if not channel_mults:
            raise ValueError("channel_mults must name at least one level")
        self.num_features, self.num_classes, self.use_cond_channels = num_features, num_classes, use_cond_channels
        if blocks_per_level < 1:
            raise ValueError(f"blocks_per_level must be >= 1, got {blocks_per_level}")
        self.levels, self.blocks_per_level = len(channel_mults), blocks_per_level
        widths = [channels * m for m in channel_mults]
        emb_dim = 4 * channels
        self.step_embedding = DiffusionStepEmbedding(diffusion_embedding_dim, emb_dim)
        self.class_embedding = nn.Embedding(num_classes, emb_dim) if num_classes > 0 else None
        in_ch = num_features * (3 if use_cond_channels else 1)
        self.input = nn.Conv1d(in_ch, channels, 3, padding=1)
        self.down, self.downsample, skip_widths = self._down_path(channels, widths, emb_dim, dropout)
        mid = widths[-1]
        self.mid = nn.ModuleList([ResBlock1D(mid, mid, emb_dim, dropout), ResBlock1D(mid, mid, emb_dim, dropout)])
        self.mid_attn = nn.ModuleList([Attention1D(mid, heads), Attention1D(mid, heads)]) if attention else None
        self.up, self.upsample = self._up_path(widths, skip_widths, emb_dim, dropout)
        self.out_norm = nn.GroupNorm(_groups(widths[0]), widths[0])
        self.output = nn.Conv1d(widths[0], num_features, 3, padding=1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    # -- construction ------------------------------------------------------------------------------
    def _down_path(self, channels: int, widths: list[int], emb_dim: int, dropout: float):
        down, downsample, skips, prev = nn.ModuleList(), nn.ModuleList(), [channels], channels
        for i, w in enumerate(widths):
            level = nn.ModuleList()
            for _ in range(self.blocks_per_level):
                level.append(ResBlock1D(prev, w, emb_dim, dropout))
                prev = w
                skips.append(w)
            down.append(level)
            last = i == len(widths) - 1
            downsample.append(nn.Identity() if last else nn.Conv1d(w, w, 3, stride=2, padding=1))
            if not last:
                skips.append(w)
        return down, downsample, skips

    def _up_path(self, widths: list[int], skips: list[int], emb_dim: int, dropout: float):
        up, upsample, prev, skips = nn.ModuleList(), nn.ModuleList(), widths[-1], list(skips)
        for i, w in reversed(list(enumerate(widths))):
            out_w = widths[i - 1] if i > 0 else widths[0]
            level = nn.ModuleList()
            for _ in range(self.blocks_per_level + 1):
                level.append(ResBlock1D(prev + skips.pop(), w, emb_dim, dropout))
                prev = w
            up.append(level)
            upsample.append(nn.Conv1d(w, out_w, 3, padding=1) if i > 0 else nn.Identity())
            prev = out_w if i > 0 else w
        return up, upsample

    # -- forward -----------------------------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        """Conditional with ``use_cond_channels``; ``num_classes`` labels; pooled :meth:`features`."""
        return Capabilities(conditional=self.use_cond_channels, num_classes=self.num_classes, features=True)

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """x_t: (B, L, K) noisy series; t: (B,) step; cond: see :class:`tsdiffusion.batch.Cond` -> (B, L, K)."""
        h, _ = self._run(x_t, t, cond)
        return h

    def features(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """Pooled hidden activations, (B, H): mean and max over time of every level's last down-path block
        and of the middle block (H = 2 * (sum(widths) + widths[-1])). Used by the representation task."""
        _, hidden = self._run(x_t, t, cond)
        return torch.cat([torch.cat([a.mean(-1), a.amax(-1)], dim=-1) for a in hidden], dim=-1)

    def _run(self, x_t: Tensor, t: Tensor, cond: Cond) -> tuple[Tensor, list[Tensor]]:
        L = x_t.shape[1]
        emb = self._embedding(t, cond, x_t)
        x = self._pad(self._input(x_t, cond))
        h, skips, hidden = self.input(x), [], []
        skips.append(h)
        for level, down in zip(self.down, self.downsample):
            for block in level:
                h = block(h, emb)
                skips.append(h)
            hidden.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self._middle(h, emb)
        hidden.append(h)
        for level, up in zip(self.up, self.upsample):
            for block in level:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2, mode="nearest"))
        out = self.output(F.silu(self.out_norm(h)))[..., :L]
        return rearrange(out, "b k l -> b l k"), hidden

    def _middle(self, h: Tensor, emb: Tensor) -> Tensor:
        for i, block in enumerate(self.mid):
            if self.mid_attn is not None:
                h = self.mid_attn[i](h)
            h = block(h, emb)
        return h

    def _embedding(self, t: Tensor, cond: Cond, like: Tensor) -> Tensor:
        """(B, E): step embedding, plus the class embedding of ``cond["label"]`` when class-conditional."""
        emb = self.step_embedding(t.to(like.device))
        if self.class_embedding is None:
            return emb
        if "label" not in cond:
            raise KeyError("UNet1DDenoiser(num_classes > 0) needs cond['label'] (B,) long; the batch has no 'label'")
        label = cond["label"].long()
        if label.min() < 0 or label.max() >= self.num_classes:
            raise ValueError(f"cond['label'] must lie in [0, {self.num_classes}), got {label.min()}..{label.max()}")
        return emb + self.class_embedding(label)

    def _input(self, x_t: Tensor, cond: Cond) -> Tensor:
        """(B, C_in, L): x_t, then (when enabled) the conditioning values and mask, features as channels."""
        if x_t.shape[-1] != self.num_features:
            raise ValueError(f"x_t has K={x_t.shape[-1]} features, the network was built for {self.num_features}")
        parts = [x_t]
        if self.use_cond_channels:
            zeros = torch.zeros_like(x_t)
            parts += [cond.get("observed", zeros).to(x_t.dtype), cond.get("cond_mask", zeros).to(x_t.dtype)]
        return rearrange(torch.cat(parts, dim=-1), "b l k -> b k l")

    def _pad(self, x: Tensor) -> Tensor:
        """Right-pad (B, C, L) with zeros to a multiple of 2^(levels - 1)."""
        factor = 2 ** (self.levels - 1)
        return F.pad(x, (0, (-x.shape[-1]) % factor))
