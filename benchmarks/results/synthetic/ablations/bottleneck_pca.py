"""How many dimensions does the one-step-ahead optimal mean of the synthetic forecasting set span (normalised units)?

TimeGrad's eps-network sees the RNN state only through its conditioning upsampler, K // 2 = 4 units for K = 8 series:
a rank-4 (piecewise-linear) bottleneck. A Kalman filter on a fresh 4800-step path of the same model gives the exact
one-step predictive mean at every step; the variance of that mean outside its first 4 principal components is what a
linear rank-4 map cannot express (issue 29). Run from the repository root:

    python benchmarks/results/synthetic/ablations/bottleneck_pca.py
"""

import numpy as np

from tsdiffusion.data import SyntheticDataModule

dm = SyntheticDataModule(protocol="forecast", context_length=72, prediction_length=24, max_lag=24, optimal_samples=0)
model, ssm = dm.model, dm.model.ssm
y = model.simulate(0, 4800, np.random.default_rng([0, 1]))
s, P = np.zeros(ssm.A.shape[0]), ssm.P0
loc, scale = dm.loc_scale
means = []
for t in range(len(y)):
    mu = model.mean(np.array([t]))[0] + ssm.C @ s  # one-step predictive mean and covariance of y_t
    S = ssm.C @ P @ ssm.C.T + np.diag(ssm.R)
    means.append((mu - loc) / scale)
    gain = P @ ssm.C.T @ np.linalg.inv(S)
    s, P = s + gain @ (y[t] - mu), P - gain @ ssm.C @ P
    s, P = ssm.A @ s, ssm.A @ P @ ssm.A.T + ssm.Q
cov = S / np.outer(scale, scale)  # stationary one-step covariance, normalised units
ev = np.linalg.eigvalsh(np.cov(np.array(means[500:]).T))[::-1]
print("eigenvalues of the one-step mean's covariance over time:", np.round(ev, 4))
print(f"variance of the mean {ev.sum():.4f}, beyond the first 4 components {ev[4:].sum():.4f}")
print(f"one-step predictive variance (sum over series) {np.trace(cov):.4f}; ratio {ev[4:].sum() / np.trace(cov):.3f}")
