"""Denoisers: plain ``nn.Module``s that know nothing about betas or Lightning.

Every denoiser has the same call signature::

    denoiser(x_t: Tensor (B, L, K), t: Tensor (B,) long, cond: Cond) -> Tensor (B, L, K)

and takes ``num_features`` (K of the full dataset) as its first constructor argument, which the CLI
links from ``data.num_features``. The output is in the prediction units of the diffusion process
(eps, x0 or v). ``cond`` is a :class:`tsdiffusion.batch.Cond` dict. Every denoiser declares what it can
do in a ``capabilities`` attribute (:class:`Capabilities`; the :class:`Denoiser` protocol); tasks read it with
:func:`capabilities_of`. This module's exports are the registry that configs name with
``class_path: tsdiffusion.denoisers.<Name>``. :class:`TimeGradEncoder` is not a denoiser: it computes
TimeGrad's conditioning ``cond["hidden"]``.
"""

from tsdiffusion.denoisers.channel_independent import ChannelIndependent
from tsdiffusion.denoisers.csdi import CSDIDenoiser
from tsdiffusion.denoisers.protocol import Capabilities, Denoiser, capabilities_of
from tsdiffusion.denoisers.timegrad import TimeGradDenoiser, TimeGradEncoder
from tsdiffusion.denoisers.unet1d import UNet1DDenoiser

__all__ = [
    "CSDIDenoiser",
    "Capabilities",
    "ChannelIndependent",
    "Denoiser",
    "TimeGradDenoiser",
    "TimeGradEncoder",
    "UNet1DDenoiser",
    "capabilities_of",
]
