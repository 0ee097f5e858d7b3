"""Channel independence: one univariate network shared by every series of a window.

TSDiff (Kollovieh et al. 2023) and PatchTST (Nie et al. 2023) model each series on its own with shared weights:
the K series of a window are folded into the batch, ``x_t`` (B, L, K) -> (B K, L, 1), the inner network runs on
univariate rows and its output is unfolded back. A model trained this way sees B K series per step instead of B
windows, does not need K to be fixed (a 203-series panel and a 7-series one use the same weights) and its
parameter count does not grow with K; it cannot model cross-series structure, which is what CSDI's feature
transformer is for.

The wrapper keeps the denoiser contract (:class:`tsdiffusion.denoisers.Denoiser`), so every task and sampler
(guidance included) uses it unchanged::

    denoiser:
      class_path: tsdiffusion.denoisers.ChannelIndependent
      init_args:
        denoiser: {class_path: tsdiffusion.denoisers.UNet1DDenoiser, init_args: {num_features: 1, ...}}
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from tsdiffusion.batch import Cond
from tsdiffusion.denoisers.protocol import Capabilities, capabilities_of

# Cond fields with one column per series: folded with x_t. feature_ids (B, K) becomes (B K, 1); every other
# field (timepoints, time_features, hidden, label) belongs to the window and is repeated for each of its series.
_PER_SERIES = ("observed", "cond_mask")


class ChannelIndependent(nn.Module):
    """Run a univariate denoiser (``num_features == 1``) on each series of a window, weights shared.

    Args:
        denoiser: the inner network, built for one feature.
        num_features: K of the data (linked by the CLI from ``data.num_features``); informational, any K is
            accepted at call time.
    """

    def __init__(self, denoiser: nn.Module, num_features: int | None = None):
        super().__init__()
        inner_k = getattr(denoiser, "num_features", 1)
        if inner_k != 1:
            raise ValueError(
                f"ChannelIndependent: the inner denoiser {type(denoiser).__name__} is built for num_features="
                f"{inner_k}; it must model one series (num_features: 1)"
            )
        self.denoiser = denoiser
        self.num_features = num_features

    @property
    def capabilities(self) -> Capabilities:
        """The inner network's; ``features`` are averaged over the series of a window."""
        return capabilities_of(self.denoiser)

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """x_t (B, L, K), t (B,), cond -> (B, L, K), each series denoised on its own."""
        K = x_t.shape[-1]
        return rearrange(self.denoiser(*_fold(x_t, t, cond)), "(b k) l 1 -> b l k", k=K)

    def features(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """(B, H): the inner network's pooled features of each series, averaged over the window's series."""
        K = x_t.shape[-1]
        return rearrange(self.denoiser.features(*_fold(x_t, t, cond)), "(b k) h -> b k h", k=K).mean(1)


def _fold(x_t: Tensor, t: Tensor, cond: Cond) -> tuple[Tensor, Tensor, Cond]:
    """The inner network's arguments for the (B K) univariate rows of a (B, L, K) window batch."""
    K = x_t.shape[-1]
    return rearrange(x_t, "b l k -> (b k) l 1"), t.repeat_interleave(K), fold_cond(cond, K)


def fold_cond(cond: Cond, K: int) -> Cond:
    """The conditioning of (B K) univariate rows: per-series fields folded, per-window fields repeated K times."""
    out: dict[str, Tensor] = {}
    for key, value in cond.items():
        if key in _PER_SERIES:
            out[key] = rearrange(value, "b l k -> (b k) l 1")
        elif key == "feature_ids":
            out[key] = rearrange(value, "b k -> (b k) 1")
        elif isinstance(value, Tensor):
            out[key] = value.repeat_interleave(K, dim=0)
        else:
            out[key] = value
    return out


__all__ = ["ChannelIndependent", "fold_cond"]
