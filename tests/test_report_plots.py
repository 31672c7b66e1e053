import numpy as np
import pytest
from matplotlib.image import imread

from onenet_med.report import RunCurves, plot_class_dice, plot_dice_curves, plot_loss_curves, plot_overlays
from onenet_med.report.plots import CLASS_COLOURS, plot_frontier

NAMES = ("background", "csf", "grey", "white")


def _runs():
    a = RunCurves(
        train_loss=[(1, 1.2), (2, 0.8), (3, 0.5)],
        validation={"ce": [(2, 0.9)], "dice": [(2, 0.7)], "dice_grey": [(2, 0.8)], "dice_csf": [(2, float("nan"))]},
    )
    b = RunCurves(train_loss=[(1, 1.4), (2, 1.0)], validation={"ce": [(2, 1.1)], "dice": [(2, 0.6)]})
    return {"onenet_ed4": a, "unet4": b}


def _png(path):
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01  # not a blank canvas
    return img


@pytest.mark.parametrize(
    "plot,args",
    [
        (plot_loss_curves, ()),
        (plot_dice_curves, (NAMES[1:],)),
    ],
)
def test_curve_plots_write_pngs(tmp_path, plot, args):
    path = plot(_runs(), *args, tmp_path / "sub" / "curves.png")
    assert path == str(tmp_path / "sub" / "curves.png")
    _png(path)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["curves.png"]  # no temporary file left behind


def test_class_bars_accept_missing_values(tmp_path):
    results = {"a": {"csf": 0.5, "grey": 0.9, "white": None, "mean": 0.7}, "b": {"csf": float("nan"), "mean": 0.2}}
    _png(plot_class_dice(results, NAMES[1:], tmp_path / "bars.png", title="Per-class Dice"))


def test_overlay_draws_each_class_in_its_colour(tmp_path):
    image = np.zeros((40, 30, 3), np.float32)
    image[5:35, 5:25] = 1.0
    truth = np.zeros((40, 30, 3), np.uint8)
    truth[5:35, 5:25] = 2  # grey matter everywhere inside
    pred = np.zeros_like(truth)
    pred[5:35, 5:25] = 3
    path = plot_overlays(image, truth, {"net": pred}, [1], NAMES, tmp_path / "overlay.png", alpha=1.0)
    rgb = _png(path)[..., :3].reshape(-1, 3)

    def has(colour):
        return bool(np.any(np.abs(rgb - np.array(colour)).max(1) < 0.02))

    assert has(CLASS_COLOURS[1]) and has(CLASS_COLOURS[2])  # grey matter (truth) and white matter (prediction)


def test_overlay_rejects_mismatched_shapes_and_no_slices(tmp_path):
    image = np.zeros((8, 8, 2))
    with pytest.raises(ValueError, match="net has shape"):
        plot_overlays(image, None, {"net": np.zeros((8, 7, 2))}, [0], NAMES, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no slices"):
        plot_overlays(image, None, {}, [], NAMES, tmp_path / "x.png")


@pytest.mark.parametrize("threads", [["1"], ["1", "2"]])
def test_frontier_plot_has_one_panel_per_thread_count(tmp_path, threads):
    rows = [
        {"label": "a@8", "network": "a", "width": 8, "accuracy": 0.9, "latency_ms": {"1": 10.0, "2": 6.0},
         "pareto": {"1": True, "2": True}},
        {"label": "a@16", "network": "a", "width": 16, "accuracy": 0.93, "latency_ms": {"1": 30.0, "2": 20.0},
         "pareto": {"1": True, "2": True}},
        {"label": "b@8", "network": "b", "width": 8, "accuracy": None, "latency_ms": {"1": 12.0, "2": 5.0},
         "pareto": {"1": False, "2": False}},  # no accuracy: left out of the panels
    ]  # fmt: skip
    one = _png(plot_frontier(rows, ["1"], tmp_path / "one.png"))
    img = _png(plot_frontier(rows, threads, tmp_path / "frontier.png"))
    assert img.shape[1] > (1.5 * one.shape[1] if len(threads) == 2 else 0.9 * one.shape[1])  # panels side by side
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"one.png", "frontier.png"})
