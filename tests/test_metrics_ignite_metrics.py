"""SegmentationMetrics: accumulation over batches equals the one-shot computation; MONAI evaluator use; DDP."""

from __future__ import annotations

import math

import ignite.distributed as idist
import pytest
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator

from onenet_med.metrics import SegmentationMetrics, segmentation_metrics

V = 255


def random_batch(seed: int, n: int, k: int, spatial: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    label = torch.randint(0, k, (n, 1, *spatial), generator=gen)
    label[torch.rand(label.shape, generator=gen) < 0.1] = V
    clean = label.clone()
    clean[clean == V] = 0
    one_hot = torch.nn.functional.one_hot(clean[:, 0], k).movedim(-1, 1).float()
    return torch.randn(n, k, *spatial, generator=gen) + one_hot, label


def assert_results_equal(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(actual[key]), key
        else:
            assert actual[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize(
    "k,spatial,batch_sizes",
    [
        (3, (5, 4), [2, 3, 1]),  # 2D images
        (4, (4, 3), [1, 1, 1, 1]),
        (3, (4, 3, 5), [2, 1]),  # volumes (B, K, H, W, D)
    ],
)
def test_accumulation_equals_one_shot(k, spatial, batch_sizes):
    batches = [random_batch(seed, n, k, spatial) for seed, n in enumerate(batch_sizes)]
    metric = SegmentationMetrics(k, class_names=[f"c{i}" for i in range(k)])
    for batch in batches:
        metric.update(batch)
    logits = torch.cat([b[0] for b in batches])
    label = torch.cat([b[1] for b in batches])
    expected = segmentation_metrics(logits, label, k, class_names=[f"c{i}" for i in range(k)])
    assert_results_equal(metric.compute(), expected)
    assert ("volume_dice" in expected) == (len(spatial) == 3)
    # the same through an Ignite engine with the scalar variant
    engine = Engine(lambda e, b: b)
    SegmentationMetrics(k, key="map50").attach(engine, "map50_only")
    SegmentationMetrics(k).attach(engine, "all")
    state = engine.run(batches)
    assert state.metrics["map50_only"] == pytest.approx(expected["map50"], rel=1e-9)
    assert state.metrics["ce"] == pytest.approx(expected["ce"], rel=1e-9)
    assert "all" not in state.metrics  # the dict variant is flattened into the engine's metrics only


def test_per_case_rows_hand_case():
    # case 0: class 1 predicted on 1 of 2 GT pixels (Dice 2/3); case 1: nothing present -> NaN
    logits = 5.0 * torch.tensor([[[[0.0, 1.0, 0.0]]], [[[0.0, 0.0, 0.0]]]])  # (2, 1, 1, 3) -> make K=2 below
    logits = torch.cat([torch.zeros_like(logits), logits], dim=1)  # class 1 wins where the value is 5
    label = torch.tensor([[[[1, 1, 0]]], [[[0, 0, V]]]])
    label = MetaTensor(label, meta={"filename_or_obj": ["a.nii.gz", "b.nii.gz"]})
    metric = SegmentationMetrics(2, class_names=["background", "lesion"])
    metric.update((logits, label))
    rows = metric.per_case_rows()
    assert [r["case"] for r in rows] == ["a.nii.gz", "b.nii.gz"]
    assert rows[0]["dice_lesion"] == pytest.approx(2 / 3)
    assert rows[0]["iou_lesion"] == pytest.approx(1 / 2)
    assert math.isnan(rows[1]["dice_lesion"])
    assert rows[1]["ce"] == pytest.approx(0.6931471805599453, rel=1e-6)  # uniform logits: log 2


def test_volume_rows_and_errors():
    logits, label = random_batch(0, 2, 3, (3, 3, 4))
    metric = SegmentationMetrics(3, key="volume_dice")
    metric.update((logits, label))
    rows = metric.per_case_rows()
    assert [r["case"] for r in rows] == ["case_0000", "case_0001"]
    assert all(r["slices"] == 4 and "volume_dice_class2" in r for r in rows)
    expected = segmentation_metrics(logits, label, 3)["volume_dice"]
    assert metric.compute() == pytest.approx(expected)
    with pytest.raises(ValueError, match="both 2D images and 3D volumes"):
        metric.update(random_batch(1, 1, 3, (3, 3)))
    metric_2d = SegmentationMetrics(3, key="volume_dice")
    metric_2d.update(random_batch(1, 1, 3, (3, 3)))
    with pytest.raises(KeyError, match="volume inputs"):
        metric_2d.compute()
    bad_label = MetaTensor(torch.full((1, 1, 3, 3), 7), meta={"filename_or_obj": ["case_9.nii.gz"]})
    with pytest.raises(ValueError, match=r"label values \[7\] are outside 0..2.*cases: case_9.nii.gz"):
        SegmentationMetrics(3).update((torch.randn(1, 3, 3, 3), bad_label))
    with pytest.raises(NotComputableError):
        SegmentationMetrics(3).compute()


@pytest.mark.parametrize("decollate", [True, False])
def test_monai_supervised_evaluator(decollate):
    """Key metric and additional metrics in a MONAI SupervisedEvaluator; decollated or batched output."""
    torch.manual_seed(0)
    k = 3
    net = torch.nn.Conv2d(1, k, 1)
    data = []
    for i in range(5):
        image, label = torch.randn(1, 4, 5), torch.randint(0, k, (1, 4, 5))
        data.append({"image": image, "label": MetaTensor(label, meta={"filename_or_obj": f"case{i}.png"})})
    metric = SegmentationMetrics(k, class_names=["bg", "a", "b"])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=2),
        network=net,
        key_val_metric={"val_dice": SegmentationMetrics(k, key="dice")},
        additional_metrics={"val": metric},
        decollate=decollate,
    )
    evaluator.run()
    with torch.no_grad():
        logits = net(torch.stack([d["image"] for d in data]))
    expected = segmentation_metrics(logits, torch.stack([d["label"].as_tensor() for d in data]), k, ["bg", "a", "b"])
    metrics = evaluator.state.metrics
    assert metrics["val_dice"] == pytest.approx(expected["dice"])
    assert_results_equal({key: metrics[key] for key in expected}, expected)
    assert evaluator.state.best_metric == pytest.approx(expected["dice"])
    assert [r["case"] for r in metric.per_case_rows()] == [f"case{i}.png" for i in range(5)]


def test_key_metric_also_reports_everything_once():
    """One keyed metric fills the key value under its name and every result key, from a single computation."""
    k = 3
    batches = [random_batch(seed, 2, k, (4, 3)) for seed in range(3)]
    expected = segmentation_metrics(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]), k)
    metric = SegmentationMetrics(k, key="miou")
    calls = []
    original = metric.results
    metric.results = lambda: calls.append(1) or original()
    engine = Engine(lambda e, b: b)
    metric.attach(engine, "val_key")
    state = engine.run(batches)
    assert len(calls) == 1
    assert state.metrics["val_key"] == pytest.approx(expected["miou"])
    assert_results_equal({key: state.metrics[key] for key in expected}, expected)
    clash = Engine(lambda e, b: b)
    SegmentationMetrics(k, key="dice").attach(clash, "dice")
    with pytest.raises(ValueError, match="collides"):
        clash.run(batches)


def _ddp_worker(local_rank: int, k: int) -> None:
    rank, world = idist.get_rank(), idist.get_world_size()
    batches = [random_batch(seed, 1 + seed % 3, k, (4, 3)) for seed in range(5)]
    metric = SegmentationMetrics(k)
    for batch in batches[rank::world]:  # uneven shares: rank 0 gets 3 batches, rank 1 gets 2
        metric.update(batch)
    results = metric.compute()
    logits = torch.cat([b[0] for b in batches])
    label = torch.cat([b[1] for b in batches])
    expected = segmentation_metrics(logits, label, k)
    assert_results_equal(results, expected)
    assert len(metric.per_case_rows()) == label.shape[0]


@pytest.mark.slow  # spawning two interpreters takes ~20 s on the shared 2-core machine
def test_ddp_gathers_all_ranks():
    """Two gloo processes with different shares of the data compute the metrics of the whole data set."""
    with idist.Parallel(backend="gloo", nproc_per_node=2) as parallel:
        parallel.run(_ddp_worker, 3)


def test_probabilities_refused_by_the_ignite_metric():
    """An evaluator whose postprocessing applied softmax (or one-hot) fails at the first batch, saying so."""
    logits, label = random_batch(3, 2, 3, (6, 6))
    metric = SegmentationMetrics(num_classes=3)
    metric.reset()
    metric.update((logits, label))  # logits: accepted
    with pytest.raises(ValueError, match="expect raw logits .* but got probabilities"):
        metric.update((torch.softmax(logits, 1), label))
