"""CSDIDenoiser: shapes, faithfulness to the original architecture, no target leakage, gradients.

``ReferenceCSDI`` below is CSDI laid out as the original code lays it out (Tashiro et al., 2021,
``diff_models.py``): (B, C, K*L) tensors, 1x1 ``Conv1d``, ``nn.TransformerEncoder`` on permuted
sequence-first copies, the side information concatenated to (B, 145, K, L) and convolved in every
layer, the step embedding read from a precomputed table. The efficient denoiser must have the same
parameters and compute the same function. ``benchmarks/scripts/bench_csdi_denoiser.py`` times it as the
baseline.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tsdiffusion.denoisers.csdi import (
    CSDIDenoiser,
    CSDILinearTransformerLayer,
    CSDITransformerLayer,
    _dropout,
    convert_original_state_dict,
    lag_steps,
)
from tsdiffusion.denoisers.layers import DiffusionStepEmbedding, step_sinusoids, time_sinusoids

# ----------------------------------------------------------------------------- the reference


def _conv(cin: int, cout: int) -> nn.Conv1d:
    layer = nn.Conv1d(cin, cout, 1)
    nn.init.kaiming_normal_(layer.weight)
    return layer


def _torch_transformer(channels: int, heads: int, dropout: float = 0.1) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(channels, heads, dim_feedforward=64, dropout=dropout, activation="gelu")
    return nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)


class _ReferenceStepEmbedding(nn.Module):
    def __init__(self, num_steps: int = 50, dim: int = 128) -> None:
        super().__init__()
        half = dim // 2
        freqs = 10.0 ** (torch.arange(float(half)) / (half - 1) * 4.0)
        table = torch.arange(num_steps).unsqueeze(1) * freqs.unsqueeze(0)  # (T, dim/2)
        self.register_buffer("table", torch.cat([table.sin(), table.cos()], dim=1), persistent=False)
        self.projection1 = nn.Linear(dim, dim)
        self.projection2 = nn.Linear(dim, dim)

    def forward(self, t: Tensor) -> Tensor:
        return F.silu(self.projection2(F.silu(self.projection1(self.table[t]))))


class _ReferenceResidualLayer(nn.Module):
    def __init__(self, side_dim: int, channels: int, emb_dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.diffusion_projection = nn.Linear(emb_dim, channels)
        self.cond_projection = _conv(side_dim, 2 * channels)
        self.mid_projection = _conv(channels, 2 * channels)
        self.output_projection = _conv(channels, 2 * channels)
        self.time_layer = _torch_transformer(channels, heads, dropout)
        self.feature_layer = _torch_transformer(channels, heads, dropout)

    def forward(self, x: Tensor, side: Tensor, emb: Tensor) -> tuple[Tensor, Tensor]:
        B, C, K, L = x.shape
        y = x.reshape(B, C, K * L) + self.diffusion_projection(emb).unsqueeze(-1)
        if L > 1:  # sequence L, batch B*K
            y = y.reshape(B, C, K, L).permute(3, 0, 2, 1).reshape(L, B * K, C)
            y = self.time_layer(y).reshape(L, B, K, C).permute(1, 3, 2, 0).reshape(B, C, K * L)
        if K > 1:  # sequence K, batch B*L
            y = y.reshape(B, C, K, L).permute(2, 0, 3, 1).reshape(K, B * L, C)
            y = self.feature_layer(y).reshape(K, B, L, C).permute(1, 3, 0, 2).reshape(B, C, K * L)
        y = self.mid_projection(y) + self.cond_projection(side.reshape(B, side.shape[1], K * L))
        gate, filt = y.chunk(2, dim=1)
        residual, skip = self.output_projection(torch.sigmoid(gate) * torch.tanh(filt)).chunk(2, dim=1)
        return (x + residual.reshape(x.shape)) / math.sqrt(2.0), skip.reshape(x.shape)


class ReferenceCSDI(nn.Module):
    """The original CSDI layout, same constructor arguments and call signature as CSDIDenoiser."""

    def __init__(
        self,
        num_features: int,
        channels: int = 64,
        layers: int = 4,
        heads: int = 8,
        diffusion_embedding_dim: int = 128,
        time_embedding_dim: int = 128,
        feature_embedding_dim: int = 16,
        dropout: float = 0.1,
        unconditional: bool = False,
        num_steps: int = 50,
    ) -> None:
        super().__init__()
        self.unconditional, self.time_dim, self.channels = unconditional, time_embedding_dim, channels
        side_dim = time_embedding_dim + feature_embedding_dim + (0 if unconditional else 1)
        self.diffusion_embedding = _ReferenceStepEmbedding(num_steps, diffusion_embedding_dim)
        self.feature_embedding = nn.Embedding(num_features, feature_embedding_dim)
        self.input_projection = _conv(1 if unconditional else 2, channels)
        self.residual_layers = nn.ModuleList(
            _ReferenceResidualLayer(side_dim, channels, diffusion_embedding_dim, heads, dropout) for _ in range(layers)
        )
        self.output_projection1 = _conv(channels, channels)
        self.output_projection2 = _conv(channels, 1)
        nn.init.zeros_(self.output_projection2.weight)

    def time_embedding(self, pos: Tensor) -> Tensor:  # (B, L) -> (B, L, T)
        pe = torch.zeros(*pos.shape, self.time_dim)
        div = 1 / torch.pow(10000.0, torch.arange(0, self.time_dim, 2) / self.time_dim)
        pe[..., 0::2] = torch.sin(pos.unsqueeze(-1) * div)
        pe[..., 1::2] = torch.cos(pos.unsqueeze(-1) * div)
        return pe

    def forward(self, x_t: Tensor, t: Tensor, cond: dict) -> Tensor:
        B, L, K = x_t.shape
        x_t = x_t.transpose(1, 2)  # (B, K, L), the original layout
        time = self.time_embedding(cond["timepoints"]).unsqueeze(2).expand(-1, -1, K, -1)
        feature = self.feature_embedding(cond["feature_ids"]).unsqueeze(1).expand(-1, L, -1, -1)
        side = torch.cat([time, feature], dim=-1).permute(0, 3, 2, 1)  # (B, T+F, K, L)
        if self.unconditional:
            x = x_t.unsqueeze(1)
        else:
            mask = cond["cond_mask"].transpose(1, 2)
            x = torch.stack([mask * cond["observed"].transpose(1, 2), (1 - mask) * x_t], dim=1)
            side = torch.cat([side, mask.unsqueeze(1)], dim=1)
        x = F.relu(self.input_projection(x.reshape(B, -1, K * L))).reshape(B, self.channels, K, L)
        emb = self.diffusion_embedding(t)
        skips = []
        for layer in self.residual_layers:
            x, skip = layer(x, side, emb)
            skips.append(skip)
        x = torch.stack(skips).sum(0).reshape(B, self.channels, K * L) / math.sqrt(len(self.residual_layers))
        x = self.output_projection2(F.relu(self.output_projection1(x)))
        return x.reshape(B, K, L).transpose(1, 2)


_TORCH_LAYER_KEYS = {
    "in_proj.weight": "layers.0.self_attn.in_proj_weight",
    "in_proj.bias": "layers.0.self_attn.in_proj_bias",
    "out_proj.weight": "layers.0.self_attn.out_proj.weight",
    "out_proj.bias": "layers.0.self_attn.out_proj.bias",
}


def reference_key(key: str) -> str:
    """State-dict key of CSDIDenoiser -> the matching key of ReferenceCSDI."""
    for layer in (".time_layer.", ".feature_layer."):
        if layer in key:
            head, tail = key.split(layer)
            return head + layer + _TORCH_LAYER_KEYS.get(tail, "layers.0." + tail)
    return key


@torch.no_grad()
def copy_to_reference(model: CSDIDenoiser, ref: ReferenceCSDI) -> None:
    target = ref.state_dict()
    source = model.state_dict()
    assert {reference_key(k) for k in source} == set(target)
    for key, value in source.items():
        target[reference_key(key)].copy_(value.reshape(target[reference_key(key)].shape))


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: a second thread only adds synchronisation (seconds per test on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(B: int, L: int, K: int, num_features: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(B, L, K, generator=g)
    mask = (torch.rand(B, L, K, generator=g) < 0.5).float()
    ids = torch.stack([torch.randperm(num_features or K, generator=g)[:K] for _ in range(B)])
    cond = {
        "observed": torch.randn(B, L, K, generator=g) * mask,
        "cond_mask": mask,
        "timepoints": torch.arange(L).float().expand(B, L) + torch.rand(B, 1, generator=g),
        "feature_ids": ids,
    }
    t = torch.randint(0, 50, (B,), generator=g)
    return x_t, t, cond


def small_model(unconditional: bool = False, num_features: int = 6, **kw) -> CSDIDenoiser:
    torch.manual_seed(0)
    model = CSDIDenoiser(num_features, channels=16, layers=2, heads=4, unconditional=unconditional, **kw)
    nn.init.normal_(model.output_projection2.weight, std=0.5)  # the zero init hides every other input
    return model.eval()


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("unconditional", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 3), (1, 1, 4), (3, 6, 1), (1, 1, 1), (2, 7, 6)])
@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_output_shape(shape: tuple[int, int, int], unconditional: bool, attention: str) -> None:
    model = small_model(unconditional, attention=attention)
    x_t, t, cond = make_inputs(*shape, num_features=6)
    out = model(x_t, t, cond)
    assert out.shape == shape and torch.isfinite(out).all()


def test_conditional_and_unconditional_differ_in_inputs_and_side_dims() -> None:
    cond_model, uncond_model = small_model(False), small_model(True)
    assert cond_model.input_projection.in_features == 2 and uncond_model.input_projection.in_features == 1
    assert cond_model.residual_layers[0].cond_projection.in_features == 128 + 16 + 1
    assert uncond_model.residual_layers[0].cond_projection.in_features == 128 + 16
    x_t, t, cond = make_inputs(2, 5, 3)
    out = uncond_model(x_t, t, {"timepoints": cond["timepoints"], "feature_ids": cond["feature_ids"]})
    assert torch.equal(out, uncond_model(x_t, t, cond))  # the unconditional model ignores observed/mask
    with pytest.raises(KeyError, match="cond_mask"):
        cond_model(x_t, t, {"observed": cond["observed"]})


@pytest.mark.parametrize("unconditional", [False, True])
def test_parameter_count_matches_torch_reference(unconditional: bool) -> None:
    for kw in ({}, {"channels": 32, "layers": 2, "heads": 4, "feature_embedding_dim": 8}):
        model = CSDIDenoiser(35, unconditional=unconditional, **kw)
        ref = ReferenceCSDI(35, unconditional=unconditional, **kw)
        n_model = sum(p.numel() for p in model.parameters())
        assert n_model == sum(p.numel() for p in ref.parameters())
    default = CSDIDenoiser(35)
    # paper config by hand: step embedding 2 * (128 * 128 + 128), features 35 * 16, input 2 * 64 + 64,
    # 4 layers * (diffusion 128 * 64 + 64, side 145 * 128 + 128, mid and output 2 * (64 * 128 + 128),
    # 2 transformers * (in 64 * 192 + 192, out 64 * 64 + 64, ff 2 * (64 * 64 + 64), norms 4 * 64)),
    # output 64 * 64 + 64 and 64 + 1
    assert sum(p.numel() for p in default.parameters()) == 33_024 + 560 + 192 + 4 * 94_016 + 4_160 + 65


@pytest.mark.parametrize("axis", ["L", "K"])
def test_transformer_layer_equals_torch_layer(axis: str) -> None:
    torch.manual_seed(0)
    ours = CSDITransformerLayer(32, 8, axis, ff_dim=64, dropout=0.0).train()
    theirs = nn.TransformerEncoderLayer(32, 8, 64, dropout=0.0, activation="gelu", batch_first=True).train()
    theirs.load_state_dict(
        {_TORCH_LAYER_KEYS.get(k, k).removeprefix("layers.0."): v for k, v in ours.state_dict().items()}
    )
    x = torch.randn(3, 7, 5, 32, requires_grad=True)  # (B, L, K, C)
    batch, seq = ("(b k)", "l") if axis == "L" else ("(b l)", "k")
    to_seq, from_seq = f"b l k c -> {batch} {seq} c", f"{batch} {seq} c -> b l k c"

    out_ours, out_theirs = rearrange(ours(x), to_seq), theirs(rearrange(x, to_seq))
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-5, rtol=1e-5)
    grads_ours = torch.autograd.grad(out_ours.square().sum(), [x, *ours.parameters()])
    grads_theirs = torch.autograd.grad(out_theirs.square().sum(), [x, *theirs.parameters()])
    for a, b in zip(grads_ours, grads_theirs):
        torch.testing.assert_close(a, b.reshape(a.shape), atol=1e-4, rtol=1e-4)
    ours.eval(), theirs.eval()  # eval: PyTorch's fused fast path
    with torch.no_grad():
        expected = rearrange(theirs(rearrange(x, to_seq)), from_seq, b=3, l=7, k=5)
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("unconditional", [False, True])
@pytest.mark.parametrize("shape", [(2, 6, 5), (1, 1, 3), (2, 4, 1)])
def test_whole_model_equals_original_layout(shape: tuple[int, int, int], unconditional: bool) -> None:
    torch.manual_seed(1)
    kw = {"channels": 16, "layers": 2, "heads": 4, "unconditional": unconditional}
    model, ref = CSDIDenoiser(7, **kw).eval(), ReferenceCSDI(7, **kw).eval()
    nn.init.normal_(model.output_projection2.weight, std=0.5)
    copy_to_reference(model, ref)
    x_t, t, cond = make_inputs(*shape, num_features=7)
    with torch.no_grad():
        torch.testing.assert_close(model(x_t, t, cond), ref(x_t, t, cond), atol=2e-5, rtol=1e-5)


def test_embeddings_match_original_formulas() -> None:
    ref = _ReferenceStepEmbedding(50, 128)
    t = torch.arange(50)
    assert torch.equal(step_sinusoids(t, 128), ref.table[t])
    pos = torch.rand(3, 9) * 48
    assert torch.equal(time_sinusoids(pos, 128), ReferenceCSDI(4).time_embedding(pos))
    assert DiffusionStepEmbedding(128)(t).shape == (50, 128)


@pytest.mark.parametrize(("lags", "interpolated"), [((), False), ((2, 5), False), ((), True)])
@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_no_target_leakage(attention: str, lags: tuple[int, ...], interpolated: bool) -> None:
    model = small_model(False, attention=attention, lags=lags, interpolated_input=interpolated)
    x_t, t, cond = make_inputs(2, 8, 5, num_features=6, seed=3)
    mask = cond["cond_mask"]
    with torch.no_grad():
        out = model(x_t, t, cond)
        # values of `observed` where cond_mask == 0 (the targets) must not reach the output
        leaked = dict(cond, observed=cond["observed"] + 100.0 * torch.randn_like(x_t) * (1 - mask))
        assert torch.equal(model(x_t, t, leaked), out)
        # x_t where cond_mask == 1 is replaced by the given values
        assert torch.equal(model(x_t + 100.0 * torch.randn_like(x_t) * mask, t, cond), out)
        # ... while x_t at the targets and observed values at the conditions do matter
        assert not torch.allclose(model(x_t + (1 - mask), t, cond), out)
        assert not torch.allclose(model(x_t, t, dict(cond, observed=cond["observed"] + mask)), out)


def test_gradients_reach_every_parameter() -> None:
    for unconditional in (False, True):
        model = small_model(unconditional).train()
        x_t, t, cond = make_inputs(3, 6, 6, num_features=6)
        model(x_t, t, cond).square().mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_zero_initialised_output() -> None:
    model = CSDIDenoiser(4, channels=16, layers=2, heads=4).eval()
    x_t, t, cond = make_inputs(2, 5, 4)
    out = model(x_t, t, cond)
    assert torch.allclose(out, model.output_projection2.bias.expand_as(out))


def test_feature_ids_subsets_and_permutations() -> None:
    model = small_model(False, num_features=20)
    x_t, t, cond = make_inputs(3, 6, 5, num_features=20, seed=5)  # each row its own 5 of 20 series
    with torch.no_grad():
        out = model(x_t, t, cond)
        # permutation equivariance over features: the embedding goes by id, not by position
        perm = torch.tensor([3, 0, 4, 1, 2])
        permuted = {k: (v[..., perm] if k != "timepoints" else v) for k, v in cond.items()}
        torch.testing.assert_close(model(x_t[..., perm], t, permuted), out[..., perm], atol=1e-5, rtol=1e-5)
        # rows are independent: row 1 alone gives the same output
        row = {k: v[1:2] for k, v in cond.items()}
        torch.testing.assert_close(model(x_t[1:2], t[1:2], row), out[1:2], atol=1e-5, rtol=1e-5)
        # the ids are used
        other = dict(cond, feature_ids=(cond["feature_ids"] + 1) % 20)
        assert not torch.allclose(model(x_t, t, other), out)
        # without ids, the series are 0..K-1
        first = dict(cond, feature_ids=torch.arange(5).expand(3, 5))
        no_ids = {k: v for k, v in cond.items() if k != "feature_ids"}
        assert torch.equal(model(x_t, t, no_ids), model(x_t, t, first))
        no_tp = {k: v for k, v in first.items() if k != "timepoints"}
        assert torch.equal(model(x_t, t, no_tp), model(x_t, t, dict(first, timepoints=torch.arange(6.0).expand(3, 6))))
    with pytest.raises(ValueError, match="feature_ids"):
        CSDIDenoiser(4)(
            torch.zeros(1, 3, 5),
            torch.zeros(1, dtype=torch.long),
            {"observed": torch.zeros(1, 3, 5), "cond_mask": torch.zeros(1, 3, 5)},
        )


def _ops(model: nn.Module, *inputs) -> set[str]:
    with torch.profiler.profile() as prof:
        model(*inputs).sum().backward() if model.training else model(*inputs)
    return {e.key for e in prof.key_averages()}


def test_attention_dropout_and_memory_efficient_kernel() -> None:
    model = CSDIDenoiser(4, channels=16, layers=1, heads=4, attention_dropout=0.0)
    layer = model.residual_layers[0].time_layer
    assert layer.dropout == 0.1 and layer.attention_dropout == 0.0
    assert CSDIDenoiser(4).residual_layers[0].feature_layer.attention_dropout == 0.1  # as CSDI
    # no (S x S) weights (softmax over them) in evaluation, nor in training without attention dropout
    inputs = make_inputs(2, 5, 4)
    flash = "aten::_scaled_dot_product_flash_attention_for_cpu"
    assert flash in _ops(model.eval(), *inputs) and "aten::_softmax" not in _ops(model.eval(), *inputs)
    assert "aten::_softmax" not in _ops(model.train(), *inputs)
    # with it, the (S x S) weights: torch's softmax, or on the CPU the fused softmax + dropout kernel
    weights = {"aten::_softmax", "tsdiffusion::softmax_dropout"}
    assert weights & _ops(CSDIDenoiser(4, channels=16, layers=1, heads=4).train(), *inputs)
    with pytest.raises(ValueError, match="divide"):
        CSDITransformerLayer(30, 8, "L")


@pytest.mark.parametrize("axis", ["L", "K"])
def test_attention_is_one_qkv_gemm_without_copies(axis: str) -> None:
    """Evaluation: q, k and v come from one GEMM and reach the attention kernel as strided views: no
    activation is cloned; the only activation-sized copies are addmm's bias broadcasts into its outputs
    (q/k/v, out_proj, linear1, linear2). The weight reordering copies C x 3C values."""
    B, L, K, C = 2, 6, 5, 16
    layer = CSDITransformerLayer(C, 4, axis, ff_dim=8).eval()
    with torch.profiler.profile(record_shapes=True) as prof:
        layer(torch.randn(B, L, K, C))
    events = prof.key_averages(group_by_input_shape=True)
    gemms = [e.input_shapes for e in events if e.key == "aten::addmm"]
    assert [C, 3 * C] in [shapes[2] for shapes in gemms]  # q, k, v: one (C x 3C) weight
    copies = [(e.input_shapes[0], e.count) for e in events if e.key in ("aten::clone", "aten::copy_")]
    big = [(shape, n) for shape, n in copies if math.prod(shape[:-1]) >= B * L * K]  # (rows, channels)
    assert sorted(big) == sorted([([B * L * K, 3 * C], 1), ([B * L * K, C], 2), ([B * L * K, 8], 1)])


def test_dropout_statistics_and_gradient() -> None:
    torch.manual_seed(0)
    x = torch.ones(400_000, requires_grad=True)
    y = _dropout(x, 0.1)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.003
    assert abs(y.mean().item() - 1.0) < 0.004
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 65536 / (65536 - 6554)))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x * keep * scale)/dx = keep * scale
    assert _dropout(x, 0.0) is x
    assert _dropout(torch.ones(5, 3).t(), 0.5).shape == (3, 5)  # non-contiguous input


def test_train_mode_without_dropout_is_deterministic_and_equals_eval() -> None:
    model = small_model(False, dropout=0.0)
    x_t, t, cond = make_inputs(2, 6, 5, num_features=6)
    with torch.no_grad():
        torch.testing.assert_close(model.train()(x_t, t, cond), model.eval()(x_t, t, cond), atol=1e-5, rtol=1e-5)
    model = small_model(False)  # dropout 0.1 in attention and residuals: random in training only
    with torch.no_grad():
        assert not torch.equal(model.train()(x_t, t, cond), model.train()(x_t, t, cond))
        assert torch.equal(model.eval()(x_t, t, cond), model.eval()(x_t, t, cond))


def test_checkpointing_gives_the_same_gradients() -> None:
    x_t, t, cond = make_inputs(2, 6, 5, num_features=6)
    grads = []
    for checkpointing in (False, True):
        model = small_model(False, checkpointing=checkpointing).train()  # same weights: same seed
        torch.manual_seed(7)  # same dropout draws
        model(x_t, t, cond).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_original_checkpoint_layout_converts() -> None:
    """ReferenceCSDI uses the original's module names; the original's CSDI_base adds ``diffmodel.`` and
    calls the feature embedding ``embed_layer``."""
    torch.manual_seed(2)
    ref = ReferenceCSDI(5, channels=16, layers=2, heads=4).eval()
    nn.init.normal_(ref.output_projection2.weight, std=0.5)
    original = {
        ("embed_layer.weight" if k.startswith("feature_embedding") else "diffmodel." + k): v
        for k, v in ref.state_dict().items()
    }
    model = CSDIDenoiser(5, channels=16, layers=2, heads=4).eval()
    model.load_state_dict(convert_original_state_dict(original))
    x_t, t, cond = make_inputs(2, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(model(x_t, t, cond), ref(x_t, t, cond), atol=2e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- linear attention (forecasting)


def linear_layer_by_formula(layer: CSDILinearTransformerLayer, seq: Tensor) -> Tensor:
    """The linear-attention transformer layer written out per sequence and per head, (N, S, C) -> (N, S, C):
    Shen et al.'s efficient attention, softmax(Q) over channels and softmax(K) over positions."""
    H = layer.heads
    d = seq.shape[-1] // H
    out = []
    for x in seq:  # (S, C)
        h = F.layer_norm(x, x.shape[-1:], layer.norm1.weight, layer.norm1.bias)
        heads = []
        for i in range(H):
            rows = slice(i * d, (i + 1) * d)
            q = torch.softmax(h @ layer.to_q.weight[rows].T, dim=1)  # (S, d): over channels
            k = torch.softmax(h @ layer.to_k.weight[rows].T, dim=0)  # (S, d): over positions
            v = h @ layer.to_v.weight[rows].T
            heads.append(q @ (k.T @ v) / math.sqrt(d))
        x = x + layer.to_out(torch.cat(heads, dim=1))
        h = F.layer_norm(x, x.shape[-1:], layer.norm2.weight, layer.norm2.bias)
        out.append(x + layer.w2(F.gelu(layer.w1(h))))
    return torch.stack(out)


@pytest.mark.parametrize("axis", ["L", "K"])
def test_linear_transformer_layer_equals_formula(axis: str) -> None:
    torch.manual_seed(0)
    layer = CSDILinearTransformerLayer(16, 4, axis)
    for norm in (layer.norm1, layer.norm2):  # non-trivial affine parameters
        nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    x = torch.randn(2, 7, 5, 16)
    batch, seq = ("(b k)", "l") if axis == "L" else ("(b l)", "k")
    with torch.no_grad():
        expected = linear_layer_by_formula(layer, rearrange(x, f"b l k c -> {batch} {seq} c"))
        got = rearrange(layer(x), f"b l k c -> {batch} {seq} c")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in layer.parameters()) == 4 * 16 * 16 + 16 + 2 * 16 * 64 + 64 + 16 + 4 * 16


@pytest.mark.parametrize("axis", ["L", "K"])
def test_linear_transformer_layer_equals_original_package(axis: str) -> None:
    """Against ``linear_attention_transformer`` (what CSDI's forecasting code builds), where installed."""
    lat = pytest.importorskip("linear_attention_transformer")
    torch.manual_seed(0)
    theirs = lat.LinearAttentionTransformer(
        dim=16, depth=1, heads=4, max_seq_len=256, n_local_attn_heads=0, local_attn_window_size=0
    ).eval()
    ours = CSDILinearTransformerLayer(16, 4, axis).eval()
    state = convert_original_state_dict({f"time_layer.{k}": v for k, v in theirs.state_dict().items()})
    ours.load_state_dict({k.removeprefix("time_layer."): v for k, v in state.items()})
    x = torch.randn(2, 7, 5, 16)
    batch, seq = ("(b k)", "l") if axis == "L" else ("(b l)", "k")
    with torch.no_grad():
        expected = theirs(rearrange(x, f"b l k c -> {batch} {seq} c"))
        torch.testing.assert_close(rearrange(ours(x), f"b l k c -> {batch} {seq} c"), expected, atol=1e-5, rtol=1e-5)


def test_linear_attention_memory_is_linear_in_sequence() -> None:
    """No (S x S) tensor: the saved activations of a feature layer over K = 2000 series stay O(K)."""
    layer = CSDILinearTransformerLayer(16, 4, "K")
    x = torch.randn(1, 2, 2000, 16, requires_grad=True)
    sizes = []

    def pack(t: Tensor) -> Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum().backward()
    assert max(sizes) <= 2 * 2000 * 64  # the widest activation is the (K x 4C) feed-forward hidden layer


def test_linear_attention_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="attention must be"):
        CSDIDenoiser(4, attention="flash")
    with pytest.raises(ValueError, match="must divide"):
        CSDILinearTransformerLayer(10, 4, "L")


def test_lag_channels() -> None:
    x = torch.randn(2, 7, 3)
    for d in (1, 3, 7, 9):
        expected = torch.stack([x[:, i - d] if i >= d else torch.zeros(2, 3) for i in range(7)], dim=1)
        assert torch.equal(lag_steps(x, d), expected)
    model = small_model(False, lags=(2, 4))
    assert model.input_projection.in_features == 2 + 2 * 2
    x_t, t, cond = make_inputs(2, 8, 5, num_features=6, seed=4)
    cond["cond_mask"][:, 6:] = 0  # forecast the last two steps
    with torch.no_grad():
        out = model(x_t, t, cond)
        # a conditioning value at step 3 reaches step 7 (lag 4) through the lag channel even without attention:
        # switch off both transformers and the value still moves the forecast at 7 (and at 5, lag 2)
        for layer in model.residual_layers:
            for tr in (layer.time_layer, layer.feature_layer):
                tr.forward = lambda h: h
        base = model(x_t, t, cond)
        moved = dict(cond, observed=cond["observed"].clone())
        moved["observed"][:, 3, 0] += 5.0 * cond["cond_mask"][:, 3, 0]
        diff = (model(x_t, t, moved) - base).abs()[:, :, 0]
        assert (diff[:, [5, 7]] > 0).all() and (diff[:, [0, 1, 2, 4, 6]] == 0).all()
    assert out.shape == (2, 8, 5)
    with pytest.raises(ValueError, match="lags"):
        CSDIDenoiser(3, lags=(0,))
    with pytest.raises(ValueError, match="unconditional"):
        CSDIDenoiser(3, unconditional=True, lags=(24,))


def test_interpolated_input_channel() -> None:
    """The extra channel is the linear interpolation of the conditioning values (fill.interpolate, checked
    against numpy.interp here) and carries a conditioning value to the missing steps around it without
    attention."""
    model = small_model(False, interpolated_input=True)
    assert model.input_projection.in_features == 3
    x_t, t, cond = make_inputs(2, 9, 4, num_features=6, seed=5)
    cond["cond_mask"][:, :, 0] = 0
    cond["cond_mask"][:, [1, 6], 0] = 1  # series 0: conditioned at steps 1 and 6 only
    cond["observed"] = cond["observed"] * cond["cond_mask"]
    channels = model._input(x_t, cond, cond["cond_mask"])
    for b in range(2):
        for k in range(4):
            m = cond["cond_mask"][b, :, k].numpy() > 0
            if not m.any():
                expected = np.zeros(9)
            else:
                steps = np.arange(9)
                expected = np.interp(steps, steps[m], cond["observed"][b, m, k].numpy())
            np.testing.assert_allclose(channels[b, :, k, 2].numpy(), expected, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        for layer in model.residual_layers:
            for tr in (layer.time_layer, layer.feature_layer):
                tr.forward = lambda h: h
        base = model(x_t, t, cond)
        moved = dict(cond, observed=cond["observed"].clone())
        moved["observed"][:, 1, 0] += 5.0
        diff = (model(x_t, t, moved) - base).abs()[:, :, 0]
        # steps 0 (constant before the first value) and 2..5 (between 1 and 6) move; 6.. do not; 1 is conditioned
        assert (diff[:, [0, 2, 3, 4, 5]] > 0).all() and (diff[:, 6:] == 0).all()
    with pytest.raises(ValueError, match="unconditional"):
        CSDIDenoiser(3, unconditional=True, interpolated_input=True)


def test_cpu_training_under_bf16_autocast_runs_the_attention_kernel_in_float32(monkeypatch):
    """torch's fused CPU attention is 5-12x slower forward + backward in bf16 than in float32 at CSDI's shapes
    (benchmarks/scripts/bench_cpu_attention.py): a training step under bf16 autocast on CPU calls it in float32;
    sampling (no grad) keeps bf16. The layer's output is close to float32's and gradients flow."""
    import tsdiffusion.denoisers.csdi as csdi

    monkeypatch.setattr(csdi.kernels, "supports", lambda *a: False)  # torch's kernel without grad too (see below)
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append(q.dtype)
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(csdi.F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    layer = CSDITransformerLayer(16, 2, "L", ff_dim=32, dropout=0.0).train()
    x = torch.randn(2, 12, 3, 16, requires_grad=True)
    reference = layer(x)
    assert seen == [torch.float32]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        out.float().sum().backward()
        assert seen[-1] == torch.float32  # (the layer norm returns float32 under autocast either way)
        with torch.no_grad():
            layer(x)
        assert seen[-1] == torch.bfloat16 and len(seen) == 3
    assert x.grad is not None and torch.isfinite(x.grad).all()
    torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("budget", [2**30, 0])  # the side term as one tensor per layer, or as its parts
@pytest.mark.parametrize(
    ("unconditional", "lags", "interpolated", "attention"),
    [(False, (), False, "softmax"), (True, (), False, "softmax"), (False, (2, 5), True, "softmax"),
     (False, (), False, "linear")],
)  # fmt: skip
def test_bind_caches_the_conditioning_and_gives_the_forward_output(
    unconditional: bool, lags: tuple, interpolated: bool, attention: str, budget: int, monkeypatch
) -> None:
    """A sampling chain's denoiser (CSDIDenoiser.bind: the conditioning's projections computed once) equals
    forward at every step of a chain, with one step for all rows (embedded once) or one per row; the cache is
    built once per chain."""
    model = small_model(unconditional, lags=lags, interpolated_input=interpolated, attention=attention)
    monkeypatch.setattr(model, "chain_cache_bytes", budget)
    x_t, _, cond = make_inputs(3, 8, 5, num_features=6, seed=4)
    builds = []
    original = model._chain_cache
    monkeypatch.setattr(model, "_chain_cache", lambda *a: builds.append(1) or original(*a))
    with torch.no_grad():
        fn = model.bind(cond)
        for step in (49, 20, 0):
            t = torch.full((3,), step)
            torch.testing.assert_close(fn(x_t, t), model(x_t, t, cond), rtol=1e-5, atol=1e-5)
            x_t = x_t * 0.9 + 0.1
        t = torch.tensor([3, 40, 11])
        torch.testing.assert_close(fn(x_t, t), model(x_t, t, cond), rtol=1e-5, atol=1e-5)
        assert len(builds) == 1
        sub = {k: v[:2] for k, v in cond.items()}
        torch.testing.assert_close(model.bind(sub)(x_t[:2], t[:2]), model(x_t[:2], t[:2], sub), rtol=1e-5, atol=1e-5)


def test_bind_calls_an_instance_forward_such_as_a_compiled_one() -> None:
    model = small_model()
    x_t, t, cond = make_inputs(2, 6, 4, num_features=6)
    model.forward = lambda x, t, c: torch.zeros_like(x)  # what compile_denoiser does: an instance-level forward
    assert torch.equal(model.bind(cond)(x_t, t), torch.zeros_like(x_t))


def test_bind_under_bf16_autocast_runs_a_bf16_copy_of_the_weights() -> None:
    """Sampling under bf16 autocast on the CPU: the chain runs on a bf16 copy of the weights (made once, remade
    after the weights change, never in the state dict), returns float32, and agrees with autocast's forward to
    bf16 rounding; timepoints stay float32 (a bf16 timepoint 1000.5 would round to 1000)."""
    model = small_model(lags=(2,)).eval()
    x_t, t, cond = make_inputs(3, 8, 5, num_features=6, seed=1)
    cond["timepoints"] = cond["timepoints"] + 1000
    with torch.no_grad():
        exact = model(x_t, t, cond)
        fn = model.bind(cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(x_t, t)
            twin = model.__dict__["_twin"][1]
            assert fn(x_t, t).dtype == torch.float32 and model.__dict__["_twin"][1] is twin
        assert all(p.dtype == torch.bfloat16 for p in twin.parameters())
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert not any(k.startswith("_twin") for k in model.state_dict())
        torch.testing.assert_close(out, exact, atol=0.05, rtol=0.05)
        assert not torch.equal(out, exact)  # it did run in bf16
        assert torch.equal(fn(x_t, t), exact) or torch.allclose(fn(x_t, t), exact, atol=1e-5)  # autocast off: fp32
        model.output_projection2.weight.mul_(2)  # a training step in place: the copy is remade
        with torch.autocast("cpu", dtype=torch.bfloat16):
            doubled = model.bind(cond)(x_t, t)
        assert model.__dict__["_twin"][1] is not twin
        torch.testing.assert_close(doubled, model(x_t, t, cond), atol=0.1, rtol=0.05)
