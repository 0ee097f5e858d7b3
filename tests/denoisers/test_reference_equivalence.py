"""Golden equivalence with the reference CSDI code (ermongroup/CSDI, commit 7f24a43) and TimeGrad (pytorch-ts 0.6.0).

The fixtures in tests/fixtures/reference/ were written by benchmarks/reference/make_csdi_fixtures.py from the
reference's own functions (see the README there); no reference code is needed here. With the reference weights
converted by ``convert_original_state_dict``, the same batch, masks, diffusion steps and noise, our denoiser,
loss, gradients, reverse step and 50-step chain must equal the reference's. Each check compares the tensors in
pipeline order and names the first one that differs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from tsdiffusion.denoisers import CSDIDenoiser, TimeGradDenoiser, TimeGradEncoder
from tsdiffusion.denoisers.csdi import convert_original_state_dict
from tsdiffusion.denoisers.timegrad import convert_pytorchts_encoder_state_dict, convert_pytorchts_state_dict
from tsdiffusion.diffusion import GaussianDiffusion, sample_ddpm

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
ATOL = 1e-5  # denoiser output, loss, inputs (float32)
GRAD_RTOL = 1e-4  # |g_ours - g_ref| / |g_ref| per parameter tensor
CHAIN_RTOL = 1e-5  # sampling: two algebraic forms of the step in float32, relative to max |x| (an untrained
# model's chain reaches |x| ~ 100)


def assert_same(name: str, ours: Tensor, ref: Tensor, atol: float = ATOL, rtol: float = 0.0) -> None:
    """max |ours - ref| <= atol + rtol max |ref|, or fail naming ``name`` (checks run in pipeline order, so the
    failure names the first differing tensor)."""
    assert ours.shape == ref.shape, f"first differing tensor: {name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    err = (ours.double() - ref.double()).abs().max().item()
    bound = atol + rtol * ref.abs().max().item()
    assert err <= bound, f"first differing tensor: {name}: max abs error {err:.3g} > {bound:.3g}"


def load(variant: str) -> dict:
    path = FIXTURES / f"csdi_{variant}.pt"
    if not path.exists():
        pytest.fail(f"{path} is missing: run benchmarks/reference/make_csdi_fixtures.py (see the README there)")
    return torch.load(path, map_location="cpu", weights_only=True)


def our_model(fx: dict) -> CSDIDenoiser:
    """CSDIDenoiser built from the fixture's reference config, loaded with the converted reference weights."""
    diff, model = fx["meta"]["config"]["diffusion"], fx["meta"]["config"]["model"]
    num_features = fx["state"]["embed_layer.weight"].shape[0]
    den = CSDIDenoiser(
        num_features,
        channels=diff["channels"],
        layers=diff["layers"],
        heads=diff["nheads"],
        diffusion_embedding_dim=diff["diffusion_embedding_dim"],
        time_embedding_dim=model["timeemb"],
        feature_embedding_dim=model["featureemb"],
        attention="linear" if diff["is_linear"] else "softmax",
    )
    den.load_state_dict(convert_original_state_dict(fx["state"]))
    return den.eval()  # the fixtures were drawn in eval mode (dropout off)


def our_process(fx: dict) -> GaussianDiffusion:
    diff = fx["meta"]["config"]["diffusion"]
    return GaussianDiffusion(diff["num_steps"], diff["schedule"], diff["beta_start"], diff["beta_end"])


def kl(x: Tensor) -> Tensor:
    """The reference's (B, K, L) <-> our (B, L, K)."""
    return x.transpose(1, 2)


def cond_of(fx: dict, cond_mask_kl: Tensor, data_lk: Tensor, feature_ids: Tensor | None = None) -> dict:
    cm = kl(cond_mask_kl)
    cond = {"observed": data_lk * cm, "cond_mask": cm, "timepoints": fx["batch"]["timepoints"]}
    if feature_ids is not None:
        cond["feature_ids"] = feature_ids
    return cond


def training_case(fx: dict) -> tuple[Tensor, Tensor, dict]:
    """(x0, loss mask, cond) of the loss fixture, in our layout; forecasting uses the sampled features."""
    batch = fx["batch"]
    if "feature_id" in fx:
        idx = fx["feature_id"]  # (B, k) the features sample_features drew
        take = lambda x: torch.stack([x[b][:, idx[b]] for b in range(len(idx))])
        x0, obs = take(batch["observed_data"]), take(batch["observed_mask"])
        return x0, obs * (1 - kl(fx["cond_mask"])), cond_of(fx, fx["cond_mask"], x0, idx)
    x0, obs = batch["observed_data"], batch["observed_mask"]
    return x0, obs * (1 - kl(fx["cond_mask"])), cond_of(fx, fx["cond_mask"], x0)


VARIANTS = ["imputation", pytest.param("forecasting", marks=pytest.mark.skipif(
    not (FIXTURES / "csdi_forecasting.pt").exists(), reason="forecasting fixture not generated"))]  # fmt: skip


@pytest.mark.parametrize("variant", VARIANTS)
def test_denoiser_output_and_loss(variant: str) -> None:
    fx = load(variant)
    den, proc, ref = our_model(fx), our_process(fx), fx["loss"]
    x0, loss_mask, cond = training_case(fx)
    t, noise = ref["t"], kl(ref["noise"])
    x_t = proc.q_sample(x0, t, noise)
    assert_same("noisy target (1 - cond_mask) x_t", x_t * (1 - cond["cond_mask"]), kl(ref["total_input"][:, 1]))
    assert_same("conditioning input cond_mask * x0", cond["observed"], kl(ref["total_input"][:, 0]))
    with torch.no_grad():
        assert_same("denoiser output", den(x_t, t, cond), kl(ref["predicted"]))
        loss = proc.loss(den, x0, cond, loss_mask, t=t, noise=noise)
    assert_same("loss", loss, ref["loss"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_gradients(variant: str) -> None:
    fx = load(variant)
    den, proc, ref = our_model(fx), our_process(fx), fx["loss"]
    x0, loss_mask, cond = training_case(fx)
    proc.loss(den, x0, cond, loss_mask, t=ref["t"], noise=kl(ref["noise"])).backward()
    ref_grads = convert_original_state_dict(ref["grads"])
    ours = {name: p.grad for name, p in den.named_parameters()}
    assert sorted(ours) == sorted(ref_grads), "parameter sets differ: " + str(set(ours) ^ set(ref_grads))
    for name, g in ours.items():  # our parameter order: input projection first
        scale = ref_grads[name].norm().item()
        assert scale > 0, f"{name}: the reference gradient is 0, the fixture does not exercise it"
        err = (g - ref_grads[name]).norm().item() / scale
        assert err <= GRAD_RTOL, f"first differing tensor: gradient of {name}: relative error {err:.3g}"


class NoiseSequence:
    """Stands in for the process's noise draws: returns the given tensors in order (zeros once exhausted)."""

    def __init__(self, tensors: list[Tensor]) -> None:
        self.tensors, self.used = list(tensors), 0

    def __call__(self, x: Tensor, generator=None) -> Tensor:
        self.used += 1
        return self.tensors.pop(0) if self.tensors else torch.zeros_like(x)


@pytest.mark.parametrize("variant", VARIANTS)
def test_reverse_steps_given_the_reference_outputs(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every single ancestral step x_t -> x_{t-1}, fed the reference's x_t, denoiser output and noise."""
    fx, chain = load(variant), load(variant)["chain"]
    proc = our_process(fx)
    free = 1 - fx["batch"]["gt_mask"]  # (B, L, K); the reference's x_t input is (1 - cond_mask) x_t
    steps, inputs, outputs, noise = chain["steps"].tolist(), chain["inputs"], chain["outputs"], chain["noise"]
    assert steps == list(range(proc.num_steps - 1, -1, -1))
    for i, t in enumerate(steps):
        z = kl(noise[i + 1]) if t > 0 else torch.zeros_like(free)
        monkeypatch.setattr(proc, "_noise_like", NoiseSequence([z]))
        x_s = proc.ddpm_step(kl(outputs[i]), x_t=kl(inputs[i]), t=t)
        ref_next = kl(inputs[i + 1]) if t > 0 else kl(chain["sample"]) * free
        assert_same(f"reverse step t={t} -> {t - 1}", x_s * free, ref_next, ATOL, CHAIN_RTOL)


@pytest.mark.parametrize("how", ["forward", "bind"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_full_chain_given_the_same_noise(variant: str, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """sample_ddpm over all 50 steps from the reference's x_T and step noise equals ``impute``; also through
    ``CSDIDenoiser.bind`` (the per-chain caches that ``draw_samples`` uses)."""
    fx = load(variant)
    den, proc, chain = our_model(fx), our_process(fx), fx["chain"]
    batch = fx["batch"]
    cond = cond_of(fx, kl(batch["gt_mask"]), batch["observed_data"])
    noise = [kl(n) for n in chain["noise"]]
    draws = NoiseSequence(noise[1:])
    monkeypatch.setattr(proc, "_noise_like", draws)
    seen: list[Tensor] = []
    call = den.bind(cond) if how == "bind" else lambda x, t: den(x, t, cond)

    def fn(x: Tensor, t: Tensor) -> Tensor:
        seen.append(x * (1 - cond["cond_mask"]))
        return call(x, t)

    sample = sample_ddpm(proc, fn, noise[0])
    assert draws.used == proc.num_steps and not draws.tensors, "sample_ddpm drew noise in an unexpected pattern"
    for i, t in enumerate(chain["steps"].tolist()):
        assert_same(f"chain input at t={t}", seen[i], kl(chain["inputs"][i]), ATOL, CHAIN_RTOL)
    assert_same("chain output x_0", sample, kl(chain["sample"]), ATOL, CHAIN_RTOL)


# ----------------------------------------------------------------------------- TimeGrad (pytorch-ts 0.6.0)


def timegrad_models(fx: dict) -> tuple[TimeGradEncoder, TimeGradDenoiser, GaussianDiffusion]:
    """Our encoder, eps-network (pytorch-ts step frequencies) and process with the converted reference weights."""
    c = fx["meta"]["config"]
    encoder = TimeGradEncoder(c["K"], c["time_features"], c["lags"], "LSTM", c["num_layers"], c["num_cells"],
                              dropout=0.1, embedding_dim=1, cond_dim=c["conditioning_length"])  # fmt: skip
    encoder.load_state_dict(convert_pytorchts_encoder_state_dict(fx["state"]))
    den = TimeGradDenoiser(c["K"], c["conditioning_length"], c["residual_layers"], c["residual_channels"],
                           c["dilation_cycle_length"], 2 * c["time_emb_dim"], c["residual_hidden"],
                           step_frequencies="timegrad")  # fmt: skip
    den.load_state_dict(convert_pytorchts_state_dict(fx["state"]))
    process = GaussianDiffusion(c["diff_steps"], c["schedule"], 1e-4, c["beta_end"])
    return encoder.eval(), den.eval(), process


def timegrad_window(fx: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Past and future as one window, scaled by the mean |value| of the last ``context`` past steps (MeanScaler,
    re-implemented here): x (B, T, K), time features (B, T, F), feature ids (B, K), the modelled positions."""
    b, c = fx["batch"], fx["meta"]["config"]
    past, future = b["past_target_cdf"], b["future_target_cdf"]
    scale = past[:, -c["context"] :].abs().mean(dim=1, keepdim=True)
    assert_same("MeanScaler scale", scale, fx["loss"]["scale"])
    x = torch.cat([past, future], dim=1) / scale
    tf = torch.cat([b["past_time_feat"], b["future_time_feat"]], dim=1)
    positions = torch.arange(x.shape[1] - c["context"] - c["prediction"], x.shape[1])
    return x, tf, b["target_dimension_indicator"], positions


def timegrad_loss(fx: dict, encoder, den, process) -> tuple[Tensor, dict[str, Tensor]]:
    ref = fx["loss"]
    x, tf, ids, positions = timegrad_window(fx)
    assert_same("RNN input (lags, embedding, time features)", encoder.inputs(x, positions, tf, ids), ref["rnn_input"])
    hidden, _ = encoder(x, positions, tf, ids)
    seen = {"hidden": hidden}
    x0 = x[:, positions].reshape(-1, 1, x.shape[-1])  # (b l) 1 k, as TimeGradTask.window_loss
    cond = {"hidden": hidden.reshape(len(x0), 1, -1)}
    noisy = process.q_sample(x0, ref["t"], ref["noise"])
    seen["noisy"], seen["eps"] = noisy, den(noisy, ref["t"], cond)
    return process.loss(den, x0, cond, torch.ones_like(x0), t=ref["t"], noise=ref["noise"]), seen


@pytest.mark.skipif(not (FIXTURES / "timegrad.pt").exists(), reason="TimeGrad fixture not generated")
def test_timegrad_encoder_denoiser_and_loss() -> None:
    fx = torch.load(FIXTURES / "timegrad.pt", map_location="cpu", weights_only=True)
    encoder, den, process = timegrad_models(fx)
    ref = fx["loss"]
    with torch.no_grad():
        loss, seen = timegrad_loss(fx, encoder, den, process)
    assert_same("conditioning h_t (RNN + projection)", seen["hidden"].reshape(ref["eps_cond"].shape), ref["eps_cond"])
    assert_same("noisy target x_t", seen["noisy"], ref["eps_input"])
    assert_same("eps-network output", seen["eps"], ref["eps_output"])
    assert_same("loss", loss, ref["loss"])


@pytest.mark.skipif(not (FIXTURES / "timegrad.pt").exists(), reason="TimeGrad fixture not generated")
def test_timegrad_parameter_gradients() -> None:
    fx = torch.load(FIXTURES / "timegrad.pt", map_location="cpu", weights_only=True)
    encoder, den, process = timegrad_models(fx)
    timegrad_loss(fx, encoder, den, process)[0].backward()
    grads = fx["loss"]["grads"]
    pairs = [(convert_pytorchts_encoder_state_dict(grads), encoder), (convert_pytorchts_state_dict(grads), den)]
    for ref_grads, module in pairs:
        ours = {name: p.grad for name, p in module.named_parameters()}
        assert sorted(ours) == sorted(ref_grads), "parameter sets differ: " + str(set(ours) ^ set(ref_grads))
        for name, g in ours.items():
            scale = ref_grads[name].norm().item()
            assert scale > 0, f"{name}: the reference gradient is 0, the fixture does not exercise it"
            err = (g - ref_grads[name]).norm().item() / scale
            assert err <= GRAD_RTOL, f"first differing tensor: gradient of {name}: relative error {err:.3g}"


@pytest.mark.skipif(not (FIXTURES / "timegrad.pt").exists(), reason="TimeGrad fixture not generated")
def test_timegrad_chain_given_the_same_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """sample_ddpm over all 100 steps equals pytorch-ts's p_sample_loop (beta-tilde variance, no noise at t=0)."""
    fx = torch.load(FIXTURES / "timegrad.pt", map_location="cpu", weights_only=True)
    _, den, process = timegrad_models(fx)
    chain = fx["chain"]
    cond = {"hidden": chain["cond"]}
    draws = NoiseSequence(list(chain["noise"][1:-1]))  # the reference's draw at t = 0 is multiplied by 0
    monkeypatch.setattr(process, "_noise_like", draws)
    sample = sample_ddpm(process, lambda x, t: den(x, t, cond), chain["noise"][0])
    assert draws.used == process.num_steps and not draws.tensors, "sample_ddpm drew noise in an unexpected pattern"
    assert_same("chain output x_0", sample, chain["sample"], ATOL, CHAIN_RTOL)


# ----------------------------------------------------------------------------- the metric


def csdi_calc_quantile_crps(target: Tensor, forecast: Tensor, eval_points: Tensor) -> float:
    """CSDI's utils.calc_quantile_CRPS written out (scaler 1, mean 0): levels np.arange(0.05, 1.0, 0.05) in float64,
    torch.quantile (linear interpolation) per item over the samples, 2 Σ|(Q - y) w (1{y <= Q} - q)| / Σ|y w|."""
    levels = np.arange(0.05, 1.0, 0.05)
    denom = torch.sum(torch.abs(target * eval_points))
    total = 0.0
    for q in levels:
        qs = torch.cat([torch.quantile(forecast[j : j + 1], q, dim=1) for j in range(len(forecast))], 0)
        total += 2 * torch.sum(torch.abs((qs - target) * eval_points * ((target <= qs) * 1.0 - q))) / denom
    return total.item() / len(levels)


@pytest.mark.parametrize("num_samples", [20, 100])
def test_crps_equals_csdis_calc_quantile_crps_in_parts(num_samples: int) -> None:
    """Our QuantileCRPS, updated batch by batch (sum states), equals CSDI's formula on the concatenated set."""
    from tsdiffusion.metrics import QuantileCRPS

    gen = torch.Generator().manual_seed(num_samples)
    y = torch.randn(12, 48, 35, generator=gen)
    s = y[:, None] + 0.2 + 0.7 * torch.randn(12, num_samples, 48, 35, generator=gen)
    w = (torch.rand(12, 48, 35, generator=gen) < 0.1).float()
    ours = QuantileCRPS()
    for part in torch.arange(12).split(5):
        ours.update(s[part], y[part], w[part])
    assert abs(ours.compute().item() - csdi_calc_quantile_crps(y, s, w)) <= 1e-6
