"""DDP exactness: two gloo processes on CPU, each updating half of the batches, give the value of one
process updating all of them (torch.distributed directly; Lightning's DDP would relaunch pytest)."""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tsdiffusion.metrics import EnergyScore, MetricName, ProbabilisticMetrics, QuantileCRPSSum

ALL_NAMES = list(MetricName.__args__)


def make_batches(seed=0):
    """Six float32 batches of uneven sizes (S=16, L=12, K=7) with random masks; one is unscored."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in (2, 3, 1, 4, 2, 3):
        target = 5 + torch.randn(b, 12, 7, generator=g)
        samples = target[:, None] + torch.randn(b, 16, 12, 7, generator=g)
        out.append((samples, target, (torch.rand(b, 12, 7, generator=g) < 0.7).float()))
    out[2][2].zero_()
    return out


def make_metrics():
    extra = {"es_step": EnergyScore("step", "fair"), "crps_sum_all": QuantileCRPSSum(sum_over="all")}
    return ProbabilisticMetrics(ALL_NAMES), extra


def evaluate(batches):
    collection, extra = make_metrics()
    for batch in batches:
        collection.update(*batch)
        for metric in extra.values():
            metric.update(*batch)
    values = {k: v.item() for k, v in collection.compute().items()}
    return values | {k: metric.compute().item() for k, metric in extra.items()}


def _worker(rank, world_size, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        values = evaluate(make_batches()[rank::world_size])
        if rank == 0:
            out_file.write_text(json.dumps(values))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    out_file = tmp_path / "ddp.json"
    mp.spawn(_worker, args=(2, tmp_path / "dist_init", out_file), nprocs=2, join=True)
    ddp, single = json.loads(out_file.read_text()), evaluate(make_batches())
    assert sorted(ddp) == sorted(single)
    for name, value in single.items():
        assert ddp[name] == pytest.approx(value, rel=1e-6, abs=1e-12), name


def test_halves_differ_from_the_whole():
    """The DDP test can fail: one process's half alone is not the whole."""
    batches = make_batches()
    assert evaluate(batches[0::2])["crps"] != pytest.approx(evaluate(batches)["crps"], rel=1e-6)
