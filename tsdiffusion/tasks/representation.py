"""Learned representations: frozen denoiser features, a linear probe and k-means, each beside raw inputs.

The denoiser is trained without labels (mask strategy ``none``: whole windows, or ``random``: CSDI's
self-supervised imputation objective). Its features of a window are the hidden activations pooled over time
(``denoiser.features(x_t, t, cond) -> (B, H)``, see :meth:`UNet1DDenoiser.features`) at a chosen diffusion
step ``t`` with ``x_t`` drawn from q(x_t | x_0) by a fixed generator -- the protocol of diffusion
representation studies (e.g. "Denoising Diffusion Autoencoders are Unified Self-supervised Learners",
Xiang et al., ICCV 2023: linear probes of pooled U-Net activations at a small noise level).

At test time the probe (standardised features, logistic regression) is fitted on the DataModule's train split
and scored on the test split (accuracy, AUROC); k-means with as many clusters as classes is scored on the
test split (NMI, ARI); see :mod:`tsdiffusion.metrics.representation`. The same four numbers on the raw,
flattened inputs are logged as ``test/raw_<name>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from torch.utils.data import DataLoader

from tsdiffusion.batch import TSBatch
from tsdiffusion.denoisers import capabilities_of
from tsdiffusion.masking import make_cond_mask
from tsdiffusion.metrics.representation import evaluate_features
from tsdiffusion.tasks.base import DiffusionTask, make_cond


def raw_features(batch: TSBatch) -> Tensor:
    """The raw-input baseline: flattened values, plus the flattened mask when values are missing. -> (B, L*K[*2])."""
    flat = rearrange(batch["observed"], "b l k -> b (l k)")
    if bool(batch["observed_mask"].all()):
        return flat
    return torch.cat([flat, rearrange(batch["observed_mask"], "b l k -> b (l k)")], dim=-1)


class RepresentationTask(DiffusionTask):
    """Train a denoiser without labels; probe and cluster its frozen, pooled features at step ``feature_step``.

    Args:
        mask_strategy: the self-supervised objective: ``none`` (denoise whole windows) or ``random``
            (CSDI's imputation training; the features are then taken with nothing given, as at ``none``).
        feature_step: the diffusion step t at which features are read (0 = least noise).
        feature_seed: seeds the noise of x_t, so features are a fixed function of the input.
        probe_split: the DataModule split the probe is fitted on (``train`` or ``val``); it is scored on test.
        **DiffusionTask arguments** (see :class:`tsdiffusion.tasks.base.DiffusionTask`).

    The denoiser needs a ``features(x_t, t, cond) -> (B, H)`` method (e.g. :class:`UNet1DDenoiser`) and must not
    see labels (``num_classes=0``); batches need a ``label``.
    """

    metric_units = "normalised"

    def __init__(
        self,
        *args,
        mask_strategy: Literal["none", "random"] = "none",
        feature_step: int = 0,
        feature_seed: int = 0,
        probe_split: Literal["train", "val"] = "train",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["denoiser", "process", "baseline", "prior"])
        caps = capabilities_of(self.denoiser)
        if not caps.features:
            raise TypeError(f"{type(self.denoiser).__name__} has no features(x_t, t, cond) method to probe")
        if caps.num_classes:
            raise ValueError("the denoiser of a representation task must not see labels (num_classes=0)")
        if not 0 <= feature_step < self.process.num_steps:
            raise ValueError(f"feature_step must be in [0, {self.process.num_steps}), got {feature_step}")
        self._test: list[dict[str, Tensor]] = []
        self.last_scores: dict[str, float] = {}

    def train_cond_mask(self, batch: TSBatch) -> Tensor:
        return make_cond_mask(self.hparams.mask_strategy, batch)

    def eval_cond_mask(self, batch: TSBatch) -> Tensor:
        return make_cond_mask("none", batch)

    # -- features -----------------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, batch: TSBatch, batch_idx: int = 0) -> Tensor:
        """Pooled hidden activations (B, H) of the frozen denoiser at ``x_t``, t = ``feature_step``."""
        x0 = batch["observed"]
        cond = make_cond(batch, self.eval_cond_mask(batch))
        cond.pop("label", None)
        gen = torch.Generator(device=x0.device).manual_seed(self.hparams.feature_seed + 7919 * batch_idx)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=gen)
        t = torch.full((len(x0),), self.hparams.feature_step, device=x0.device, dtype=torch.long)
        x_t = self.process.q_sample(x0, t, noise) * batch["observed_mask"]
        return self.denoiser.features(x_t, t, cond).float()  # float32 for the probes, also under bf16 autocast

    def extract(self, batches: Iterable[TSBatch]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features (N, H), raw inputs (N, L*K), labels (N,)) of every batch, as numpy arrays."""
        feats, raws, labels = [], [], []
        for i, batch in enumerate(batches):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            if "label" not in batch:
                raise KeyError("RepresentationTask needs batches with a 'label' field")
            feats.append(self.features(batch, i).cpu())
            raws.append(raw_features(batch).cpu())
            labels.append(batch["label"].cpu())
        return torch.cat(feats).numpy(), torch.cat(raws).numpy(), torch.cat(labels).numpy()

    # -- evaluation ---------------------------------------------------------------------------------
    def test_step(self, batch: TSBatch, batch_idx: int) -> dict[str, Tensor]:
        """Features of the test windows; returns ``{"features": (B, H), "raw": (B, L*K[*2]), "label": (B,)}``."""
        if "label" not in batch:
            raise KeyError("RepresentationTask needs batches with a 'label' field")
        # every test batch draws its x_t noise from the generator of batch 0, as the recorded scores were taken
        out = {"features": self.features(batch, 0), "raw": raw_features(batch), "label": batch["label"]}
        self._test.append(out)
        return out

    def on_test_epoch_end(self) -> None:
        """Probe and cluster the features of the whole test set (gathered over ranks, in loader order)."""
        gathered = (self.gather_ordered(torch.cat([o[k] for o in self._test])) for k in ("features", "raw", "label"))
        test_f, test_r, test_y = (x.cpu().numpy() for x in gathered)
        self._test = []
        train_f, train_r, train_y = self.extract(self._probe_batches())
        seed = self.hparams.feature_seed
        scores = evaluate_features(train_f, train_y, test_f, test_y, seed=seed)
        scores |= evaluate_features(train_r, train_y, test_r, test_y, prefix="raw_", seed=seed)
        self.last_scores = scores
        self.log_dict({f"test/{k}": float(v) for k, v in scores.items()}, sync_dist=False)

    def _probe_batches(self) -> DataLoader:
        datamodule = getattr(self.trainer, "datamodule", None)
        datasets = getattr(datamodule, "datasets", None)
        split = self.hparams.probe_split
        if not datasets or split not in datasets or len(datasets[split]) == 0:
            raise ValueError(
                f"RepresentationTask fits its probe on the DataModule's {split!r} split; it is missing or empty"
            )
        return DataLoader(datasets[split], batch_size=datamodule.eval_batch_size, shuffle=False)
