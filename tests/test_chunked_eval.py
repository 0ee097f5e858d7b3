"""Resumable chunked evaluation (tsdiffusion.chunked_eval, the full-fold PhysioNet run of issue 27) on a tiny
checkpoint in the original CSDI format (the golden fixture's weights): a run killed part-way and resumed, with
another chunk size, gives exactly the rows and aggregate of an uninterrupted run; the aggregate of the sum states
equals the metrics computed on all records at once; chunks of another config are refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tsdiffusion.chunked_eval import ChunkedRun, aggregate, imputation_evaluator, record_seed
from tsdiffusion.denoisers.pretrained import PretrainedCSDIDenoiser
from tsdiffusion.diffusion import GaussianDiffusion
from tsdiffusion.metrics import QuantileCRPS, sample_quantiles
from tsdiffusion.tasks import ImputationTask

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "reference" / "csdi_imputation.pt"
RECORDS, L, K = 5, 12, 5


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> ImputationTask:
    fx = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    torch.save(fx["state"], path)  # an original-format checkpoint, as the official model.pth
    den = PretrainedCSDIDenoiser(K, checkpoint=str(path), heads=fx["meta"]["config"]["diffusion"]["nheads"])
    process = GaussianDiffusion(num_steps=6, schedule="quad", beta_end=0.5)
    return ImputationTask(den.eval(), process, num_samples=7, sampler="ddpm").eval()


@pytest.fixture(scope="module")
def dataset() -> list[dict]:
    g = torch.Generator().manual_seed(3)
    observed_mask = (torch.rand(RECORDS, L, K, generator=g) < 0.8).float()
    target_mask = observed_mask * (torch.rand(RECORDS, L, K, generator=g) < 0.3).float()
    observed = torch.randn(RECORDS, L, K, generator=g) * observed_mask
    return [{"observed": observed[i], "observed_mask": observed_mask[i], "target_mask": target_mask[i],
             "timepoints": torch.arange(L, dtype=torch.float32)} for i in range(RECORDS)]  # fmt: skip


CONFIG = {"name": "tiny", "sampler": "ddpm", "seed": 5}


def strip(rows: dict[int, dict]) -> dict[int, dict]:
    return {i: {k: v for k, v in r.items() if k != "seconds"} for i, r in rows.items()}


def test_resumed_run_equals_uninterrupted_run(tmp_path, task, dataset) -> None:
    evaluate = imputation_evaluator(task, dataset, seed=5)
    whole = ChunkedRun(tmp_path / "whole", CONFIG)
    assert len(whole.run(range(RECORDS), evaluate, chunk_size=2, log=None)) == 3
    # killed: one chunk of 3 done, then a failure inside the next chunk: no file for the unfinished chunk
    resumed = ChunkedRun(tmp_path / "resumed", CONFIG)
    resumed.run(range(RECORDS), evaluate, chunk_size=3, max_chunks=1, log=None)
    calls = []

    def dies_at_4(i: int) -> dict:
        calls.append(i)
        if i == 4:
            raise KeyboardInterrupt
        return evaluate(i)

    with pytest.raises(KeyboardInterrupt):
        resumed.run(range(RECORDS), dies_at_4, chunk_size=3, log=None)
    assert calls == [3, 4] and sorted(p.name for p in resumed.folder.glob("records_*")) == ["records_0000-0002.json"]
    # a new process (a fresh ChunkedRun) continues with record 3, chunks of one record
    lines = []
    written = ChunkedRun(tmp_path / "resumed", CONFIG).run(range(RECORDS), evaluate, chunk_size=1, log=lines.append)
    assert [p.name for p in written] == ["records_0003-0003.json", "records_0004-0004.json"]
    assert "5/5 records" in lines[-1] and "ETA" in lines[-1]
    assert strip(resumed.rows()) == strip(whole.rows())  # the same floats, not just close
    a, b = whole.summary(), resumed.summary()
    assert {k: a[k] for k in ("crps", "mae_median", "rmse_median", "targets")} == {
        k: b[k] for k in ("crps", "mae_median", "rmse_median", "targets")
    }
    assert b["records"] == RECORDS and b["chunks"] == 3
    meta = json.loads((resumed.folder / "records_0000-0002.json").read_text())["meta"]
    assert {"torch", "threads", "machine", "wall_s", "cpu_s", "started", "finished"} <= set(meta)
    assert ChunkedRun(tmp_path / "resumed", CONFIG).run(range(RECORDS), evaluate, 2, log=None) == []


def test_aggregate_equals_the_metrics_on_all_records_at_once(task, dataset) -> None:
    samples, targets, masks = [], [], []
    rows = []
    for i in range(RECORDS):
        batch = {k: v.unsqueeze(0) for k, v in dataset[i].items()}
        gen = torch.Generator().manual_seed(record_seed(5, i))
        with torch.no_grad():
            s = task.sample(batch, task.eval_cond_mask(batch), generator=gen)
        samples.append(s), targets.append(batch["observed"]), masks.append(batch["target_mask"])
    evaluate = imputation_evaluator(task, dataset, seed=5)
    rows = [{"index": i, **evaluate(i)} for i in range(RECORDS)]
    s, y, m = torch.cat(samples), torch.cat(targets), torch.cat(masks).bool()
    crps = QuantileCRPS()
    crps.update(s, y, m)
    err = (sample_quantiles(s, [0.5])[0] - y)[m].double()
    agg = aggregate(rows)
    assert agg["crps"] == pytest.approx(crps.compute().item(), rel=1e-12)
    assert agg["mae_median"] == pytest.approx(err.abs().mean().item(), rel=1e-12)
    assert agg["rmse_median"] == pytest.approx(err.pow(2).mean().sqrt().item(), rel=1e-12)
    assert agg["targets"] == int(m.sum())
    # a mean of per-record CRPS is a different number (records have different sizes): the sums are what count
    per_record = [aggregate([r])["crps"] for r in rows]
    assert not math.isclose(sum(per_record) / RECORDS, agg["crps"], rel_tol=1e-6)


def test_record_draws_depend_on_seed_and_index_only(task, dataset) -> None:
    assert len({record_seed(s, i) for s in range(3) for i in range(799)}) == 3 * 799
    evaluate = imputation_evaluator(task, dataset, seed=5)
    first = evaluate(2)
    evaluate(0), evaluate(4)  # other records in between draw from their own generators
    assert evaluate(2) == first
    assert imputation_evaluator(task, dataset, seed=6)(2) != first


def test_chunks_of_another_config_are_refused(tmp_path, task, dataset) -> None:
    evaluate = imputation_evaluator(task, dataset, seed=5)
    ChunkedRun(tmp_path, CONFIG).run([0], evaluate, 1, log=None)
    with pytest.raises(ValueError, match="another config"):
        ChunkedRun(tmp_path, {**CONFIG, "sampler": "dpmpp"}).rows()
