"""CONTRIBUTING.md holds: every path it names exists, and a toy denoiser, a toy data set and a toy metric added
exactly as it says (one file each, named by ``class_path``) run through ``tsdiffusion fit --trainer.fast_dev_run``
and a metric update."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torchmetrics import Metric

from tsdiffusion.cli import TSDiffusionCLI
from tsdiffusion.runs import instantiate

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "CONTRIBUTING.md"

# one file per piece, as the page says; the module stands in for tsdiffusion/denoisers/toy.py and
# tsdiffusion/data/toy.py (a test must not write into the package)
TOY_PLUGIN = '''
import numpy as np
import torch
from torch import nn

from tsdiffusion.data import TSDataModule, WindowDataset
from tsdiffusion.denoisers import Capabilities


class ToyDenoiser(nn.Module):
    """x_t (B, L, K), t (B,), cond -> (B, L, K): a per-point linear map of x_t and the conditioning values."""

    capabilities = Capabilities(conditional=True)

    def __init__(self, num_features: int, hidden: int = 4):
        super().__init__()
        self.num_features = num_features
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x_t, t, cond):
        inputs = torch.stack([x_t, cond["observed"], cond["cond_mask"]], dim=-1)  # (B, L, K, 3)
        return self.net(inputs).squeeze(-1)


class ToyDataModule(TSDataModule):
    """Sine windows (L steps, K series); every 5th value of val/test is held out and scored."""

    name = "toy"

    def __init__(self, num_series: int = 3, window_length: int = 16, batch_size: int = 4):
        super().__init__(batch_size=batch_size)
        self.num_series, self.window_length = num_series, window_length

    def build(self):
        return {split: self._split(n, seed) for split, n, seed in (("train", 8, 0), ("val", 4, 1), ("test", 4, 2))}

    def _split(self, n, seed):
        rng = np.random.default_rng(seed)
        L, K = self.window_length, self.num_series
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1, K))
        observed = np.sin(np.arange(L)[None, :, None] / 3 + phase)
        target = np.zeros((n, L, K))
        target[:, ::5] = 1 if seed else 0
        return WindowDataset({
            "observed": observed, "observed_mask": np.ones((n, L, K)), "target_mask": target,
            "timepoints": np.tile(np.arange(L, dtype=float), (n, 1)), "feature_ids": np.tile(np.arange(K), (n, 1)),
            "loc": np.zeros((n, 1, K)), "scale": np.ones((n, 1, K)),
        }, source="toy")
'''


def _toy_config(tmp_path: Path, module: str) -> dict:
    return {
        "seed_everything": 1,
        "trainer": {"logger": False, "enable_progress_bar": False, "enable_model_summary": False},
        "model": {
            "class_path": "tsdiffusion.tasks.ImputationTask",
            "init_args": {
                "denoiser": {"class_path": f"{module}.ToyDenoiser", "init_args": {"hidden": 4}},
                "process": {"class_path": "tsdiffusion.diffusion.GaussianDiffusion", "init_args": {"num_steps": 5}},
                "num_samples": 2, "sampler": "ddim", "sample_steps": 2, "val_loss_steps": 1, "plot_windows": 0,
            },
        },
        "data": {"class_path": f"{module}.ToyDataModule", "init_args": {"num_series": 3, "window_length": 16}},
    }  # fmt: skip


@pytest.fixture
def toy_module(tmp_path, monkeypatch) -> str:
    name = f"toy_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(TOY_PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_every_path_on_the_page_exists():
    text = PAGE.read_text()
    named = set(re.findall(r"`((?:tsdiffusion|tests|experiments|benchmarks)/[\w./]+?)`", text))
    assert len(named) >= 20
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"CONTRIBUTING.md names paths that do not exist: {missing}"


def tree_entries(tree: str) -> list[str]:
    """The paths a folder tree names: a top folder (``tsdiffusion/``) at column 0; under it, a line's first
    entry (``cli/``, ``runs.py``) at column 2; then the ``x.py`` and ``x/`` words of a folder's line and of its
    continuation lines, inside that folder."""
    named, top, folder = [], "", ""
    for line in tree.splitlines():
        head = re.match(r"^(\w[\w-]*)/\s", line + " ")
        first = re.match(r"^  ([\w]+(?:\.py|/))\s", line)
        if head:
            top = folder = head.group(1)
            named.append(f"{top}/")
        elif first:
            named.append(f"{top}/{first.group(1)}")
            folder = f"{top}/{first.group(1).rstrip('/')}" if first.group(1).endswith("/") else ""
        rest = line[(head or first).end() :] if (head or first) else line
        if folder:
            named += [f"{folder}/{w}" for w in re.findall(r"(?<![\w./(])([a-z_]+(?:\.py|/))(?=[\s,;]|$)", rest)]
    return named


def test_every_entry_of_the_tree_exists():
    named = tree_entries(PAGE.read_text().split("```")[1])
    assert len(named) >= 40 and "tsdiffusion/benchmark/collect.py" in named
    missing = [n for n in named if not (ROOT / n).exists()]
    assert not missing, f"CONTRIBUTING.md's tree names entries that do not exist: {missing}"


def test_tree_entries_read_folders_and_their_lines():
    tree = "pkg/\n  a/   x.py y/ (z.py: not a listing)\n       w.py\n  b.py   text/ words\nother/   c/\n"
    assert tree_entries(tree) == ["pkg/", "pkg/a/", "pkg/a/x.py", "pkg/a/y/", "pkg/a/w.py", "pkg/b.py", "other/",
                                  "other/c/"]  # fmt: skip


def test_toy_denoiser_and_data_set_through_fast_dev_run(toy_module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(_toy_config(tmp_path, toy_module)))
    cli = TSDiffusionCLI(args=["fit", "--config", str(path), "--trainer.fast_dev_run", "true",
                               "--test_after_fit", "true"])  # fmt: skip
    assert type(cli.model.denoiser).__name__ == "ToyDenoiser" and cli.model.denoiser.num_features == 3  # linked
    assert math.isfinite(float(cli.trainer.callback_metrics["test/crps"]))
    # the same yaml through the Python builder gives the same model and data
    task, datamodule, trainer, config = instantiate(path, trainer=False)
    assert trainer is None and datamodule.num_features == 3
    assert config["model"]["init_args"]["denoiser"]["init_args"] == {"num_features": 3, "hidden": 4}
    assert task.state_dict().keys() == cli.model.state_dict().keys()


class MedianAbsoluteError(Metric):
    """A toy metric as the page says: sum states. Σ m |median_S(samples) - y| / Σ m over every scored point;
    samples (B, S, L, K), y and m (B, L, K)."""

    full_state_update = False  # update() needs no earlier state: states merge by summing

    def __init__(self) -> None:
        super().__init__()
        self.add_state("abs_error", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, samples: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        m = mask.double()
        self.abs_error += (m * (samples.double().median(dim=1).values - target.double()).abs()).sum()
        self.count += m.sum()

    def compute(self) -> torch.Tensor:
        return self.abs_error / self.count


def test_toy_metric_sums_over_batches_and_ranks():
    gen = torch.Generator().manual_seed(0)
    samples, target = torch.randn(6, 5, 4, 2, generator=gen), torch.randn(6, 4, 2, generator=gen)
    mask = torch.rand(6, 4, 2, generator=gen) > 0.3
    s, y, m = samples.double().numpy(), target.double().numpy(), mask.numpy()
    reference = np.abs(np.median(s, axis=1) - y)[m].mean()  # numpy, S odd: the middle sample
    whole, a, b = MedianAbsoluteError(), MedianAbsoluteError(), MedianAbsoluteError()
    whole.update(samples, target, mask)
    a.update(samples[:2], target[:2], mask[:2])  # two "ranks" with different shard sizes
    b.update(samples[2:], target[2:], mask[2:])
    a.merge_state(b)
    assert float(whole.compute()) == pytest.approx(reference, rel=1e-12)
    assert float(a.compute()) == pytest.approx(reference, rel=1e-12)
