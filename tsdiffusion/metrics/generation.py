"""Scores of synthetic time series against held-out real ones, with trivial baselines (figures:
:func:`tsdiffusion.plots.plot_generation`).

All functions take ``real`` (N, L, K) and ``synth`` (M, L, K) arrays or tensors of complete windows (no
missing values) in the same units.

- :func:`discriminative_score` and :func:`predictive_score` follow TimeGAN (Yoon, Jarrett & van der
  Schaar, "Time-series Generative Adversarial Networks", NeurIPS 2019, sec. 5 "Evaluation"), as
  Diffusion-TS reports them (Yuan & Qiao, "Diffusion-TS: Interpretable Diffusion for General Time Series
  Generation", ICLR 2024, Tables 1-2): both sets min-max scaled with the real set's per-feature range,
  a 1-layer GRU, 80/20 splits.
- :func:`marginal_distance` and :func:`acf_distance` are the histogram marginal and autocorrelation
  metrics of Ni et al. ("Sig-Wasserstein GANs for time series generation", ICAIF 2021, sec. 5);
  Diffusion-TS compares the same marginals visually, as kernel density plots.
- :func:`baseline_sets` builds the floor: the real set shuffled in time (same marginals, no dynamics) and
  Gaussian noise with the real per-feature mean and std.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn

ArrayLike = np.ndarray | Tensor
BaselineName = Literal["shuffled", "noise"]


def _as_array(x: ArrayLike, what: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if arr.ndim != 3:
        raise ValueError(f"{what}: expected shape (N, L, K), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: contains NaN/inf; scores need complete windows")
    return arr.astype(np.float32)


def _check_pair(real: ArrayLike, synth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    r, s = _as_array(real, "real"), _as_array(synth, "synth")
    if r.shape[1:] != s.shape[1:]:
        raise ValueError(f"real windows are (L, K) = {r.shape[1:]}, synthetic ones {s.shape[1:]}")
    return r, s


def minmax_scale(real: np.ndarray, synth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale both sets to [0, 1] with the real set's per-feature min and max (TimeGAN's MinMaxScaler)."""
    lo, hi = real.min(axis=(0, 1)), real.max(axis=(0, 1))
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return (real - lo) / span, (synth - lo) / span


class _GRUHead(nn.Module):
    """GRU over time, then a linear map of every hidden state. x: (B, L, K_in) -> (B, L, out)."""

    def __init__(self, in_features: int, hidden: int, out: int):
        super().__init__()
        self.gru = nn.GRU(in_features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.gru(x)
        return self.head(h)


def _seeded_gru(in_features: int, hidden: int, out: int, seed: int) -> _GRUHead:
    """A :class:`_GRUHead` whose initial weights depend on ``seed`` only (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _GRUHead(in_features, hidden, out)


def _hidden(K: int, hidden: int | None) -> int:
    """TimeGAN uses K/2 hidden units; here at least 16: with 4 units a GRU trained for 500 steps could not tell
    real UCR GunPoint series (K = 1, L = 150) from the same series with their time steps shuffled (score 0.02),
    with 16 it could (0.47), while two halves of the real set still scored 0.03."""
    return hidden if hidden is not None else max(K // 2, 16)


def _split(n: int, train_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.permutation(n)
    cut = round(train_fraction * n)
    return idx[:cut], idx[cut:]


def _with_grad(fn):
    """Run ``fn`` with autograd on, also inside Lightning's test loop (inference mode)."""
    return torch.inference_mode(False)(torch.enable_grad()(fn))


@_with_grad
def _fit(model: nn.Module, loss_fn, n: int, iterations: int, batch_size: int, lr: float, gen: torch.Generator) -> None:
    """Adam (TimeGAN: lr 1e-3) on random mini-batches of indices into ``n`` training items."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(iterations):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        opt.zero_grad()
        loss_fn(idx).backward()
        opt.step()


def discriminative_score(
    real: ArrayLike,
    synth: ArrayLike,
    *,
    hidden: int | None = None,
    iterations: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    train_fraction: float = 0.8,
    repeats: int = 1,
    seed: int = 0,
) -> float:
    """TimeGAN's discriminative score: |accuracy - 0.5| of a post-hoc real/synthetic classifier.

    A 1-layer GRU reads each (min-max scaled) window and its last hidden state goes to a logit. It is
    trained on ``train_fraction`` of each set (TimeGAN: 80%, 2000 iterations of 128) and scored on the
    rest; 0 means indistinguishable, 0.5 perfectly separable. ``repeats`` > 1 averages over fresh splits.

    Sets of equal size are split with the same indices (window i of both sets lands in the same split).
    With independent splits a synthetic set that copies real windows is scored far *below* chance: a copy
    in the test part whose original was in the training part is memorised under the other label, and
    ``|accuracy - 0.5|`` then reports a large score for a perfect copy. Paired splits keep each copy and its
    original on the same side, so identical sets score about 0.
    """
    r, s = minmax_scale(*_check_pair(real, synth))
    h = _hidden(r.shape[-1], hidden)
    scores = [_disc_once(r, s, h, iterations, batch_size, lr, train_fraction, seed + i) for i in range(repeats)]
    return float(np.mean(scores))


@_with_grad
def _disc_once(r, s, hidden, iterations, batch_size, lr, train_fraction, seed) -> float:
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    (r_tr, r_te) = _split(len(r), train_fraction, rng)
    (s_tr, s_te) = (r_tr, r_te) if len(s) == len(r) else _split(len(s), train_fraction, rng)
    x_tr = torch.from_numpy(np.concatenate([r[r_tr], s[s_tr]]))
    y_tr = torch.cat([torch.ones(len(r_tr)), torch.zeros(len(s_tr))])
    x_te = torch.from_numpy(np.concatenate([r[r_te], s[s_te]]))
    y_te = torch.cat([torch.ones(len(r_te)), torch.zeros(len(s_te))])
    model = _seeded_gru(r.shape[-1], hidden, 1, seed)
    bce = nn.BCEWithLogitsLoss()
    _fit(model, lambda i: bce(model(x_tr[i])[:, -1, 0], y_tr[i]), len(x_tr), iterations, batch_size, lr, gen)
    with torch.no_grad():
        pred = (model(x_te)[:, -1, 0] > 0).float()
    return abs(float((pred == y_te).float().mean()) - 0.5)


@_with_grad
def predictive_score(
    real: ArrayLike,
    synth: ArrayLike,
    *,
    hidden: int | None = None,
    iterations: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
) -> float:
    """Train on synthetic, test on real (TSTR): MAE of a GRU one-step-ahead predictor (TimeGAN).

    The GRU reads steps ``0..l`` of a (min-max scaled) synthetic window and predicts step ``l + 1`` of every
    feature; the score is its mean absolute error on all real windows (lower is better). TimeGAN predicts
    the last feature from the other K - 1; predicting all K features is the variant that also works for
    univariate data (K = 1).
    """
    r, s = minmax_scale(*_check_pair(real, synth))
    if r.shape[1] < 2:
        raise ValueError("predictive_score needs windows of at least 2 steps")
    gen = torch.Generator().manual_seed(seed)
    K = r.shape[-1]
    model = _seeded_gru(K, _hidden(K, hidden), K, seed)
    xs = torch.from_numpy(s)
    mae = lambda x: (model(x[:, :-1]) - x[:, 1:]).abs().mean()
    _fit(model, lambda i: mae(xs[i]), len(xs), iterations, batch_size, lr, gen)
    with torch.no_grad():
        return float(mae(torch.from_numpy(r)))


def marginal_distance(real: ArrayLike, synth: ArrayLike, *, bins: int = 50) -> np.ndarray:
    """Per-feature distance between the marginal histograms (values pooled over windows and steps), (K,).

    The bins split the real set's range of each feature into ``bins`` equal parts, plus one overflow bin on
    each side for synthetic values outside it (so disjoint supports give 1); the distance is the total
    variation ``0.5 * sum |p_real - p_synth|``
    of the two normalised histograms, in [0, 1] (Ni et al. 2021 average ``|p_real - p_synth|`` of
    histogram densities; total variation is the same up to a bin-width factor and reads without units).
    """
    r, s = _check_pair(real, synth)
    out = np.empty(r.shape[-1])
    for k in range(r.shape[-1]):
        lo, hi = float(r[..., k].min()), float(r[..., k].max())
        edges = np.linspace(lo, np.nextafter(hi, np.inf), bins + 1)
        p = np.bincount(np.searchsorted(edges, r[..., k].ravel(), side="right"), minlength=bins + 2) / r[..., k].size
        q = np.bincount(np.searchsorted(edges, s[..., k].ravel(), side="right"), minlength=bins + 2) / s[..., k].size
        out[k] = 0.5 * np.abs(p - q).sum()
    return out


def autocorrelation(x: ArrayLike, max_lag: int) -> np.ndarray:
    """Autocorrelation of each feature at lags 1..max_lag, averaged over windows: (N, L, K) -> (max_lag, K).

    Each window is centred on its own mean; the normalisation uses the pooled variance and the biased
    (divide by L) lag sums, as the standard sample autocorrelation (Box & Jenkins; statsmodels ``acf``).
    """
    a = _as_array(x, "x")
    c = a - a.mean(axis=1, keepdims=True)
    var = (c**2).mean(axis=(0, 1))
    var = np.where(var > 0, var, 1.0)
    L = a.shape[1]
    acf = [(c[:, lag:] * c[:, :-lag]).sum(axis=1).mean(axis=0) / L / var for lag in range(1, max_lag + 1)]
    return np.stack(acf)


def acf_distance(real: ArrayLike, synth: ArrayLike, *, max_lag: int | None = None) -> float:
    """Mean absolute difference of the real and synthetic autocorrelations over lags 1..max_lag and features.

    ``max_lag`` defaults to min(L - 1, 64).
    """
    r, s = _check_pair(real, synth)
    lag = min(r.shape[1] - 1, 64) if max_lag is None else max_lag
    if lag < 1:
        raise ValueError("acf_distance needs windows of at least 2 steps")
    return float(np.abs(autocorrelation(r, lag) - autocorrelation(s, lag)).mean())


def baseline_sets(real: ArrayLike, seed: int = 0) -> dict[BaselineName, np.ndarray]:
    """Trivial synthetic sets, the floor scores are read against (same shape as ``real``).

    ``shuffled``: each real window with its time steps permuted (exact marginals, no temporal structure);
    ``noise``: i.i.d. Gaussian with the real per-feature mean and std.
    """
    r = _as_array(real, "real")
    rng = np.random.default_rng(seed)
    perm = np.argsort(rng.random(r.shape[:2]), axis=1)
    shuffled = np.take_along_axis(r, perm[..., None], axis=1)
    noise = rng.normal(r.mean(axis=(0, 1)), r.std(axis=(0, 1)) + 1e-12, size=r.shape).astype(np.float32)
    return {"shuffled": shuffled, "noise": noise}


def generation_scores(
    real: ArrayLike,
    synth: ArrayLike,
    *,
    iterations: int = 2000,
    lr: float = 1e-3,
    batch_size: int = 128,
    repeats: int = 1,
    seed: int = 0,
    prefix: str = "",
) -> dict[str, float]:
    """All scores of ``synth`` against ``real``: ``discriminative``, ``predictive``, ``marginal`` (mean over
    features), ``acf``; keys start with ``prefix``. ``iterations``, ``lr``, ``batch_size`` train the GRUs."""
    fit = {"iterations": iterations, "lr": lr, "batch_size": batch_size, "seed": seed}
    scores = {
        "discriminative": discriminative_score(real, synth, repeats=repeats, **fit),
        "predictive": predictive_score(real, synth, **fit),
        "marginal": float(marginal_distance(real, synth).mean()),
        "acf": acf_distance(real, synth),
    }
    return {f"{prefix}{k}": v for k, v in scores.items()}


def scores_with_baselines(
    real: ArrayLike,
    synth: ArrayLike,
    *,
    iterations: int = 2000,
    lr: float = 1e-3,
    batch_size: int = 128,
    repeats: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """:func:`generation_scores` of ``synth`` (plain keys) and of every :func:`baseline_sets` set
    (``baseline_<name>_<score>``), plus ``real_predictive``: the predictive score of the real set on itself
    (train on real, test on real: the reference a good generator approaches)."""
    fit = {"iterations": iterations, "lr": lr, "batch_size": batch_size, "seed": seed}
    out = generation_scores(real, synth, repeats=repeats, **fit)
    for name, base in baseline_sets(real, seed).items():
        out |= generation_scores(real, base, repeats=repeats, prefix=f"baseline_{name}_", **fit)
    out["real_predictive"] = predictive_score(real, real, **fit)
    return out


# -- projections ---------------------------------------------------------------------------------


def pca_2d(real: ArrayLike, synth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Project flattened windows on the first two principal components of the real set: (N, 2), (M, 2)."""
    r, s = _check_pair(real, synth)
    fr, fs = rearrange(r, "n l k -> n (l k)"), rearrange(s, "n l k -> n (l k)")
    mean = fr.mean(axis=0)
    _, _, vt = np.linalg.svd(fr - mean, full_matrices=False)
    return (fr - mean) @ vt[:2].T, (fs - mean) @ vt[:2].T
