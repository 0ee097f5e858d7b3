"""TimeGrad (Rasul et al., ICML 2021): an RNN encoder over lagged targets and a per-step eps-network.

The model factorises the forecast autoregressively, ``p(x_{t0:T}) = prod_t p(x_t | h_t)`` (eq. 7), where
``h_t = RNN(concat(x_{t-1}, ..., covariates_t), h_{t-1})`` (eq. 6) and ``p(x_t | h_t)`` is a denoising
diffusion model on the K-vector of one time step whose eps-network is conditioned on ``h_t`` (eq. 8).

Facts from the reference implementation (zalandoresearch/pytorch-ts, ``time_grad_network.py`` and
``epsilon_theta.py``), followed here:

* encoder: LSTM, 2 layers x 40 cells, dropout 0.1; input at step t = the lagged, mean-scaled targets
  ``x_{t-l}`` for ``l`` in ``lags`` (hourly ``[1, 24, 168]``, business-daily ``[1, 2]``), a learned
  1-dimensional embedding of each series, and the time features of step t; the RNN output is projected
  to a 100-dimensional conditioning vector (``conditioning_length``);
* eps-network: the K-vector is a one-channel 1-D signal along the *series* axis; input 1x1 convolution to
  8 channels; 8 residual blocks (dilated kernel-3 convolution, dilation ``2 ** (i % 2)``, circular
  padding, gated tanh/sigmoid unit, 1x1 output convolution, LeakyReLU 0.4); the conditioning vector is
  upsampled to K by two Linear + LeakyReLU(0.4) layers (``K // 2`` then ``K``) and enters every block
  through a 1x1 convolution; skips summed / sqrt(8), kernel-3 convolution, LeakyReLU, kernel-3 output
  convolution (zero-initialised). The original pads the series axis circularly by 2 at the input and
  removes the padding with the two unpadded kernel-3 convolutions at the end; so does this file.
* diffusion-step embedding: DiffWave sinusoids of 16 frequencies (32 values), two Linear + SiLU to 64.
  TimeGrad's table uses ``10^(4 i / 16)`` (``step_frequencies="timegrad"``); the default ``"csdi"`` spaces
  them as CSDI, ``10^(4 i / 15)`` (the top frequency 10^4 instead of 10^3.75), as this file always did.
  :func:`convert_pytorchts_state_dict` maps the original's weights; with ``step_frequencies="timegrad"`` the
  eps-network then equals ``EpsilonTheta`` (tests/denoisers/test_reference_equivalence.py).

Shape convention (the choice documented for the project's common denoiser signature):
:class:`TimeGradDenoiser` takes ``x_t`` (B, L, K) and ``cond["hidden"]`` (B, L, H) and treats every time
step as an independent row, ``(b l)``: TimeGrad's eps-network acts on one time step's K-vector. Training
therefore folds the window's steps into the batch (one diffusion step per row, as the original), and
autoregressive sampling calls it with L = 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from tsdiffusion.batch import Cond, TSBatch
from tsdiffusion.denoisers.layers import DiffusionStepEmbedding, StepFrequencies, gated_activation
from tsdiffusion.denoisers.protocol import Capabilities
from tsdiffusion.hardware import keep_freed_memory
from tsdiffusion.masking import horizon_start
from tsdiffusion.streams import Source, catch_up, randn, rows_of

RNNState = Tensor | tuple[Tensor, Tensor]


def lag_inputs(x: Tensor, positions: Tensor, lags: Sequence[int]) -> Tensor:
    """Lagged values ``x[:, p - l]`` for every position p and lag l (pytorch-ts ``get_lagged_subsequences``).

    x: (B, T, K); positions: (P,) long, each ``>= max(lags)`` -> (B, P, K * len(lags)), ordered ``(k lag)``.
    """
    lag = torch.as_tensor(list(lags), device=x.device)
    idx = positions[:, None] - lag[None, :]  # (P, n)
    if (idx < 0).any() or (idx >= x.shape[1]).any():
        raise ValueError(
            f"lag_inputs: positions {positions.tolist()} with lags {list(lags)} leave the window 0..{x.shape[1] - 1}"
        )
    gathered = x[:, idx]  # (B, P, n, K)
    return rearrange(gathered, "b p n k -> b p (k n)")


class TimeGradEncoder(nn.Module):
    """TimeGrad's RNN (eq. 6): lagged scaled targets + series embedding + time features -> conditioning h_t.

    Args:
        num_features: K, the number of series (rows of the series embedding).
        num_time_features: F, time features per step (GluonTS: 4 for hourly, 3 for business-daily data).
        lags: lags of the target fed at each step, all >= 1 (TimeGrad: hourly [1, 24, 168]).
        cell: ``LSTM`` (TimeGrad's default) or ``GRU``.
        num_layers, hidden_size, dropout: RNN size (TimeGrad: 2 x 40, dropout 0.1).
        embedding_dim: width of the learned embedding of each series (TimeGrad: 1).
        cond_dim: width of the conditioning vector the eps-network receives (TimeGrad: 100).
    """

    def __init__(
        self,
        num_features: int,
        num_time_features: int,
        lags: Sequence[int] = (1, 24, 168),
        cell: Literal["LSTM", "GRU"] = "LSTM",
        num_layers: int = 2,
        hidden_size: int = 40,
        dropout: float = 0.1,
        embedding_dim: int = 1,
        cond_dim: int = 100,
    ) -> None:
        super().__init__()
        lags = sorted(int(lag) for lag in lags)
        if not lags or lags[0] < 1 or len(set(lags)) != len(lags):
            raise ValueError(f"TimeGradEncoder: lags must be distinct and >= 1 (a lag 0 sees the target), got {lags}")
        self.num_features, self.num_time_features, self.lags = num_features, num_time_features, lags
        self.embedding = nn.Embedding(num_features, embedding_dim)
        input_size = num_features * (len(lags) + embedding_dim) + num_time_features
        rnn = {"LSTM": nn.LSTM, "GRU": nn.GRU}[cell]
        self.rnn = rnn(input_size, hidden_size, num_layers, dropout=dropout, batch_first=True)
        self.projection = nn.Linear(hidden_size, cond_dim)

    @property
    def max_lag(self) -> int:
        return self.lags[-1]

    def inputs(self, x: Tensor, positions: Tensor, time_features: Tensor, feature_ids: Tensor) -> Tensor:
        """RNN inputs at ``positions``. x: (B, T, K) scaled; time_features: (B, T, F); feature_ids: (B, K).

        Returns (B, P, K * (len(lags) + E) + F). The input at position p uses x only before p.
        """
        P = len(positions)
        if time_features.shape[-1] != self.num_time_features:
            raise ValueError(
                f"TimeGradEncoder: got {time_features.shape[-1]} time features, built for num_time_features="
                f"{self.num_time_features} (GluonTS: 4 hourly, 3 business-daily)"
            )
        emb = repeat(self.embedding(feature_ids), "b k e -> b p (k e)", p=P)
        return torch.cat([lag_inputs(x, positions, self.lags), emb, time_features[:, positions]], dim=-1)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        time_features: Tensor,
        feature_ids: Tensor,
        state: RNNState | None = None,
    ) -> tuple[Tensor, RNNState]:
        """Conditioning h_t for consecutive ``positions`` (P,) of x (B, T, K) -> ((B, P, cond_dim), state)."""
        out, state = self.rnn(self.inputs(x, positions, time_features, feature_ids), state)
        return self.projection(out), state


def repeat_state(state: RNNState, n: int) -> RNNState:
    """Repeat an RNN state (layers, B, H) ``n`` times per row: ``(layers, (b n), H)`` (samples in one batch)."""
    if isinstance(state, tuple):
        return tuple(s.repeat_interleave(n, dim=1) for s in state)
    return state.repeat_interleave(n, dim=1)


def slice_state(state: RNNState, rows: slice) -> RNNState:
    """Rows ``rows`` of an RNN state (layers, N, H)."""
    if isinstance(state, tuple):
        return tuple(s[:, rows] for s in state)
    return state[:, rows]


# -- the model's two loops: teacher forcing (training) and autoregressive forecasts (Algorithm 2) -----------

#: One reverse diffusion chain: (x_T (N, 1, K), h_t (N, 1, H), the source of its draws for these N rows) -> x_0
#: (N, 1, K); the task builds it from its process and sampler (DDPM or DDIM), so this module needs no sampler.
Chain = Callable[[Tensor, Tensor, Source], Tensor]


def encoder_inputs(batch: TSBatch, max_lag: int) -> tuple[Tensor, Tensor, Tensor]:
    """Scaled values (0 where missing), time features and feature ids of a batch."""
    x = batch["observed"] * batch["observed_mask"]
    B, L, K = x.shape
    if L <= max_lag:
        raise ValueError(
            f"TimeGradTask: windows of L={L} steps leave nothing after the largest lag {max_lag}; "
            "set the DataModule's max_lag to max(lags)"
        )
    if "time_features" not in batch:
        raise KeyError("TimeGradTask: the batch needs 'time_features' (B, L, F)")
    ids = batch.get("feature_ids", torch.arange(K, device=x.device).expand(B, K))
    return x, batch["time_features"], ids


def teacher_forcing_rows(encoder: TimeGradEncoder, batch: TSBatch) -> tuple[Tensor, Tensor, Cond]:
    """Training rows of eq. 9: every step of ``[max(lags), L)`` as one ``(b l)`` row, given its h_t.

    Returns x0 and its observed mask (N, 1, K) and ``{"hidden": (N, 1, H)}``, N = B * (L - max(lags)).
    """
    x, tf, ids = encoder_inputs(batch, encoder.max_lag)
    positions = torch.arange(encoder.max_lag, x.shape[1], device=x.device)
    hidden, _ = encoder(x, positions, tf, ids)
    x0 = rearrange(x[:, positions], "b l k -> (b l) 1 k")
    mask = rearrange(batch["observed_mask"][:, positions], "b l k -> (b l) 1 k")
    return x0, mask, {"hidden": rearrange(hidden, "b l h -> (b l) 1 h")}


def forecast(encoder: TimeGradEncoder, chain: Chain, batch: TSBatch, cond_mask: Tensor, num_samples: int,
             max_batch: int | None = None, generator: Source = None) -> Tensor:  # fmt: skip
    """Autoregressive samples (B, S, L, K), normalised; steps before the horizon are the conditioning values.

    The RNN runs over the context, its state is repeated S times, and each horizon step is drawn by a full
    ``chain`` (L = 1) before it is fed back (Algorithm 2), ``max_batch`` rows (windows x samples) at a time.
    Only ``observed * cond_mask`` is read, so values on the horizon never reach the model.
    """
    S = num_samples
    x, tf, ids = encoder_inputs({**batch, "observed": batch["observed"] * cond_mask}, encoder.max_lag)
    B = x.shape[0]
    start = max(horizon_start(cond_mask), encoder.max_lag)
    context = torch.arange(encoder.max_lag, start, device=x.device)
    _, state = encoder(x, context, tf, ids) if len(context) else (None, None)
    rows = B * S
    chunk = max_batch or rows
    paths = x.repeat_interleave(S, dim=0)  # (B S) L K, filled in place step by step
    tf, ids = tf.repeat_interleave(S, dim=0), ids.repeat_interleave(S, dim=0)
    state = None if state is None else repeat_state(state, S)
    gen = generator
    with keep_freed_memory(x.device.type == "cpu"):  # the chains reuse the same heap pages call after call
        for r0 in range(0, rows, chunk):
            r = slice(r0, min(r0 + chunk, rows))
            st = None if state is None else slice_state(state, r)
            gen = rows_of(generator, r)
            _forecast_rows(encoder, chain, paths[r], tf[r], ids[r], st, start, gen)
        catch_up(generator, gen)
    samples = rearrange(paths, "(b s) l k -> b s l k", s=S)
    keep = cond_mask.unsqueeze(1)
    return samples * (1 - keep) + (x * cond_mask).unsqueeze(1)


def _forecast_rows(encoder: TimeGradEncoder, chain: Chain, paths: Tensor, tf: Tensor, ids: Tensor,
                   state: RNNState | None, start: int, generator: Source) -> None:  # fmt: skip
    """Fill ``paths[:, start:]`` (N, L, K) in place, one step at a time (TimeGrad, Algorithm 2)."""
    N, L, K = paths.shape
    for p in range(start, L):
        pos = torch.tensor([p], device=paths.device)
        hidden, state = encoder(paths, pos, tf, ids, state)  # (N, 1, H)
        x_T = randn((N, 1, K), generator, device=paths.device, dtype=paths.dtype)
        paths[:, p] = chain(x_T, hidden, generator)[:, 0]


class TimeGradResidualBlock(nn.Module):
    """One residual block of TimeGrad's eps-network on channel-last (N, K', C) signals along the series axis.

    The original's convolutions are written as matrix products (CPU convolution backward is slow for
    8 channels): the circular kernel-3 dilated convolution is a Linear layer on ``[x_{k-d}, x_k, x_{k+d}]``
    (``torch.roll`` is circular padding), the 1x1 convolutions are Linear layers.
    """

    def __init__(self, channels: int, step_dim: int, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.dilated_conv = nn.Linear(3 * channels, 2 * channels)
        self.step_projection = nn.Linear(step_dim, channels)
        self.cond_projection = nn.Linear(1, 2 * channels)
        self.output_projection = nn.Linear(channels, 2 * channels)
        nn.init.kaiming_normal_(self.cond_projection.weight)
        nn.init.kaiming_normal_(self.output_projection.weight)

    def forward(self, x: Tensor, cond: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        """x: (N, K', C); cond: (N, K', 1); step: (N, D) -> residual output and skip, both (N, K', C)."""
        d = self.dilation
        y = x + self.step_projection(step).unsqueeze(1)
        y = torch.cat([y.roll(d, dims=1), y, y.roll(-d, dims=1)], dim=-1)
        y = self.dilated_conv(y) + self.cond_projection(cond)
        y = F.leaky_relu(self.output_projection(gated_activation(y)), 0.4)
        residual, skip = y.chunk(2, dim=-1)
        return (x + residual) / math.sqrt(2.0), skip


class TimeGradDenoiser(nn.Module):
    """TimeGrad's eps-network ``eps_theta(x_t, n, h)`` (Rasul et al. 2021, eq. 8; pytorch-ts ``EpsilonTheta``).

    ``forward(x_t (B, L, K), t (B,), cond)`` with ``cond["hidden"]`` (B, L, cond_dim) -> (B, L, K): each
    of the B * L time steps is denoised on its own (the convolutions run along the series axis K), all
    with the diffusion step of its row b. Convolutions are written as Linear layers on channel-last
    tensors (same function and parameter count as the original's Conv1d layers, much faster backward on CPU).

    Args:
        num_features: K, the number of series (the conditioning is upsampled to K).
        cond_dim: width of ``cond["hidden"]`` (TimeGrad's ``conditioning_length``: 100).
        residual_layers, residual_channels, dilation_cycle: 8, 8, 2 (TimeGrad).
        step_embedding_dim: sinusoidal width of the diffusion-step encoding (TimeGrad: 2 x 16).
        step_hidden: width of the step embedding after its projections (TimeGrad: 64).
        step_frequencies: ``"timegrad"`` spaces the step encoding's frequencies as pytorch-ts (``10^(4 i / 16)``);
            ``"csdi"`` (default, this class's behaviour so far) as CSDI (``10^(4 i / 15)``).
        cond_hidden: width of the conditioning upsampler's middle layer; ``None`` = ``K // 2`` (TimeGrad). Every
            bit of h_t the eps-network sees passes through these units: with few series (K = 8: 4 units) they
            are a bottleneck narrower than the one-step conditional mean's dimension (issue 29).
    """

    # conditioned on the past through cond["hidden"] (the encoder's state), no labels, no features
    capabilities = Capabilities(conditional=True)

    def __init__(
        self,
        num_features: int,
        cond_dim: int = 100,
        residual_layers: int = 8,
        residual_channels: int = 8,
        dilation_cycle: int = 2,
        step_embedding_dim: int = 32,
        step_hidden: int = 64,
        step_frequencies: StepFrequencies = "csdi",
        cond_hidden: int | None = None,
    ) -> None:
        super().__init__()
        self.num_features, self.cond_dim = num_features, cond_dim
        mid = cond_hidden or max(num_features // 2, 1)
        self.cond_upsampler = nn.Sequential(
            nn.Linear(cond_dim, mid), nn.LeakyReLU(0.4), nn.Linear(mid, num_features), nn.LeakyReLU(0.4)
        )
        self.step_embedding = DiffusionStepEmbedding(step_embedding_dim, step_hidden, step_frequencies)
        C = residual_channels
        self.input_projection = nn.Linear(1, C)
        self.blocks = nn.ModuleList(
            TimeGradResidualBlock(C, step_hidden, 2 ** (i % dilation_cycle)) for i in range(residual_layers)
        )
        self.skip_projection = nn.Linear(3 * C, C)  # kernel-3 convolution without padding
        self.output_projection = nn.Linear(3 * C, 1)  # kernel-3 convolution without padding
        nn.init.kaiming_normal_(self.input_projection.weight)
        nn.init.kaiming_normal_(self.skip_projection.weight)
        nn.init.zeros_(self.output_projection.weight)

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """x_t: (B, L, K); t: (B,) long; cond["hidden"]: (B, L, cond_dim) -> eps (B, L, K)."""
        B, L, K = x_t.shape
        if K != self.num_features:
            raise ValueError(f"TimeGradDenoiser: K={K} series but num_features={self.num_features}")
        if "hidden" not in cond:
            raise KeyError(
                f"TimeGradDenoiser: cond['hidden'] (B, L, {self.cond_dim}) is required (have {sorted(cond)})"
            )
        rows = rearrange(x_t, "b l k -> (b l) k 1")
        hidden = rearrange(self.cond_upsampler(cond["hidden"]), "b l k -> (b l) k 1")
        step = repeat(self.step_embedding(t), "b d -> (b l) d", l=L)
        out = self._eps(_circular(rows, 2), _circular(hidden, 2), step)
        return rearrange(out, "(b l) k 1 -> b l k", b=B)

    def _eps(self, x: Tensor, cond: Tensor, step: Tensor) -> Tensor:
        """x, cond: (N, K + 4, 1) circularly padded; step: (N, D) -> (N, K, 1)."""
        h = F.leaky_relu(self.input_projection(x), 0.4)
        skip: Tensor | float = 0.0
        for block in self.blocks:
            h, s = block(h, cond, step)
            skip = s + skip
        h = F.leaky_relu(self.skip_projection(_valid3(skip / math.sqrt(len(self.blocks)))), 0.4)
        return self.output_projection(_valid3(h))


def _valid3(x: Tensor) -> Tensor:
    """The inputs of an unpadded kernel-3 convolution along axis 1: (N, K', C) -> (N, K' - 2, 3C)."""
    n = x.shape[1] - 2
    return torch.cat([x[:, :n], x[:, 1 : n + 1], x[:, 2 : n + 2]], dim=-1)


def _circular(x: Tensor, pad: int) -> Tensor:
    """Circular padding along axis 1 (also when ``pad`` exceeds its length): (N, K, C) -> (N, K + 2 pad, C)."""
    K = x.shape[1]
    idx = torch.arange(-pad, K + pad, device=x.device) % K
    return x[:, idx]


def convert_pytorchts_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """pytorch-ts 0.6 ``EpsilonTheta`` weights -> a state dict that :class:`TimeGradDenoiser` loads.

    ``state``: an ``EpsilonTheta`` state dict, or a whole ``TimeGradTrainingNetwork``/``TimeGradPredictionNetwork``
    one, whose ``denoise_fn.*`` keys are taken (the rest: see :func:`convert_pytorchts_encoder_state_dict`).

    The Conv1d layers become the Linear layers of this file: a kernel-1 weight (O, I, 1) -> (O, I); a kernel-3
    weight (O, I, 3) -> (O, 3 I) ordered ``(tap, channel)``, the taps ``[x_{k-d}, x_k, x_{k+d}]`` that
    :class:`TimeGradResidualBlock` and ``_valid3`` concatenate.
    """
    renames = {
        "diffusion_embedding.": "step_embedding.",
        "cond_upsampler.linear1.": "cond_upsampler.0.",
        "cond_upsampler.linear2.": "cond_upsampler.2.",
        "residual_layers.": "blocks.",
        ".diffusion_projection.": ".step_projection.",
        ".conditioner_projection.": ".cond_projection.",
    }
    if any(key.startswith("denoise_fn.") for key in state):
        state = {key.removeprefix("denoise_fn."): v for key, v in state.items() if key.startswith("denoise_fn.")}
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            key = key.replace(old, new)
        if value.dim() == 3:
            value = value.squeeze(-1) if value.shape[-1] == 1 else rearrange(value, "o i tap -> o (tap i)")
        out[key] = value
    return out


def convert_pytorchts_encoder_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The RNN, series embedding and conditioning projection of a pytorch-ts 0.6 ``TimeGradTrainingNetwork`` state
    dict -> a state dict that :class:`TimeGradEncoder` loads (``rnn.*`` as is, ``embed`` -> ``embedding``,
    ``proj_dist_args.proj.0`` -> ``projection``). The lag order matches: pytorch-ts flattens (series, lag)."""
    renames = {"rnn.": "rnn.", "embed.": "embedding.", "proj_dist_args.proj.0.": "projection."}
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            if key.startswith(old):
                out[new + key.removeprefix(old)] = value
    return out
