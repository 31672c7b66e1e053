"""recompute_bn_stats / BNStatsRefresh repair stale BatchNorm statistics (SPEC §6a)."""

from __future__ import annotations

import ignite.distributed as idist
import pytest
import torch
from ignite.engine import Engine
from torch import nn

from onenet_med.engine import BNStatsRefresh, recompute_bn_stats


def conv_relu_bn(norm: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
    """Conv -> ReLU -> BN with 1x1 layers, the ordering that showed the failure."""
    return nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), norm(4), nn.Conv2d(4, 3, 1))


def poison(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(5.0)
            m.running_var.fill_(1e-3)


@pytest.mark.parametrize("batch_format", ["tensor", "dict", "pair"])
def test_refresh_repairs_poisoned_statistics(batch_format):
    torch.manual_seed(0)
    model = conv_relu_bn()
    images = torch.randn(64, 2, 6, 6) * 2 + 1
    with torch.no_grad():
        model.train()
        reference = model(images)  # batch statistics of the whole set
    model.eval()
    poison(model)
    with torch.no_grad():
        stale = model(images)
    assert (stale - reference).abs().max() > 10  # the failure: eval output far from what training saw
    assert (stale.argmax(1) == reference.argmax(1)).float().mean() < 0.9

    chunks = images.split(16)  # 4 equal batches: their averaged mean equals the full-set mean
    batches = {
        "tensor": list(chunks),
        "dict": [{"image": c, "label": None} for c in chunks],
        "pair": [(c, None) for c in chunks],
    }[batch_format]
    params = [p.clone() for p in model.parameters()]
    assert recompute_bn_stats(model, batches, num_batches=None) == 4
    with torch.no_grad():
        refreshed = model(images)
    assert not model.training and all(not m.training for m in model.modules())  # modes restored
    assert model[2].momentum == 0.1  # momentum restored
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))  # weights untouched
    assert (refreshed - reference).abs().max() < 0.05  # unbiased vs biased variance and per-batch variance spread
    assert (refreshed.argmax(1) == reference.argmax(1)).float().mean() > 0.99


def test_num_batches_modes_and_no_batchnorm():
    torch.manual_seed(0)
    model = conv_relu_bn()
    model.train()
    model[3].eval()  # mixed modes are restored module by module
    batches = [torch.full((2, 2, 2, 2), float(i)) for i in range(10)]
    assert recompute_bn_stats(model, iter(batches), num_batches=3) == 3
    assert model.training and not model[3].training
    assert int(model[2].num_batches_tracked) == 3
    # empty data: statistics kept as they were
    before = model[2].running_mean.clone()
    assert recompute_bn_stats(model, [], num_batches=None) == 0
    assert torch.equal(model[2].running_mean, before)
    assert recompute_bn_stats(nn.Conv2d(2, 2, 1), batches) == 0


@pytest.mark.parametrize("event,runs", [("STARTED", 2), ("EPOCH_COMPLETED", 2)])
def test_handler_runs_before_each_evaluation(event, runs):
    torch.manual_seed(0)
    model = conv_relu_bn()
    loader = [{"image": torch.randn(4, 2, 3, 3)} for _ in range(3)]
    handler = BNStatsRefresh(model, loader, num_batches=2, event=event)
    calls = []
    engine = Engine(lambda e, b: None)
    handler.attach(engine)

    @engine.on(handler.event)
    def record(_):
        calls.append(int(model[2].num_batches_tracked))

    poison(model)
    engine.run([0], max_epochs=runs if event == "EPOCH_COMPLETED" else 1)
    if event == "STARTED":
        engine.run([0], max_epochs=1)
    assert calls == [2] * runs
    assert model[2].running_mean.abs().max() < 5.0


def _ddp_worker(local_rank: int) -> None:
    rank = idist.get_rank()
    torch.manual_seed(0)
    model = conv_relu_bn()  # same weights on both ranks
    data = [torch.randn(8, 2, 3, 3) + 3.0 * rank]  # different data per rank
    with torch.no_grad():
        model.train()
        own_mean = model[:2](data[0]).mean(dim=(0, 2, 3))
    recompute_bn_stats(model, data)
    gathered = idist.all_gather(model[2].running_mean.unsqueeze(0))
    assert torch.allclose(gathered[0], gathered[1])  # ranks agree
    means = idist.all_gather(own_mean.unsqueeze(0))
    assert torch.allclose(model[2].running_mean, means.mean(0), atol=1e-6)  # the average of the ranks' statistics


@pytest.mark.slow  # spawning two interpreters takes ~20 s on the shared 2-core machine
def test_ddp_statistics_are_averaged_over_ranks():
    with idist.Parallel(backend="gloo", nproc_per_node=2) as parallel:
        parallel.run(_ddp_worker)
