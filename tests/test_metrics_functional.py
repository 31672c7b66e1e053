"""onenet_med.metrics.functional against hand-computed cases and a brute-force pure-Python reference."""

from __future__ import annotations

import math
import random

import pytest
import torch

from onenet_med.metrics.functional import (
    average_precision,
    check_logits,
    class_keys,
    confusion_counts,
    segmentation_metrics,
    slice_statistics,
    to_slices,
    volume_dice,
)

V = 255  # void


def logits_for(pred: list, num_classes: int, prob: float | list | None = None) -> torch.Tensor:
    """Logits (N, K, H, W) whose argmax is ``pred`` (N, H, W) and whose max softmax probability is ``prob``.

    ``prob`` is one value, or one per image; the other classes share the remaining probability equally.
    """
    pred_t = torch.as_tensor(pred)
    n = pred_t.shape[0]
    probs = [0.9] * n if prob is None else ([prob] * n if isinstance(prob, float) else list(prob))
    p = torch.tensor(probs, dtype=torch.float64).view(n, 1, 1, 1)
    rest = (1 - p) / (num_classes - 1)
    one_hot = torch.nn.functional.one_hot(pred_t, num_classes).permute(0, 3, 1, 2).double()
    return torch.log(one_hot * p + (1 - one_hot) * rest).float()


def label_of(label: list) -> torch.Tensor:
    return torch.as_tensor(label).unsqueeze(1)


NAN = math.nan

# (name, pred (N,H,W), label (N,H,W), K, expected per-class dice, expected per-class iou, expected dice, miou)
HAND_CASES = [
    ("perfect", [[[0, 1, 1], [2, 2, 0]]], [[[0, 1, 1], [2, 2, 0]]], 3, [1.0, 1.0], [1.0, 1.0], 1.0, 1.0),
    ("wholly_wrong", [[[0, 0], [0, 0]]], [[[1, 1], [1, 1]]], 2, [0.0], [0.0], 0.0, 0.0),
    ("swapped_classes", [[[2, 2], [1, 1]]], [[[1, 1], [2, 2]]], 3, [0.0, 0.0], [0.0, 0.0], 0.0, 0.0),
    # class 2 in neither label nor prediction: NaN and left out of the class mean
    ("absent_class", [[[1, 0, 1, 0]]], [[[1, 1, 0, 0]]], 3, [0.5, NAN], [1 / 3, NAN], 0.5, 1 / 3),
    # second image has no foreground at all: it does not enter class 1's mean
    ("empty_image_skipped", [[[1, 0, 1, 0]], [[0] * 4]], [[[1, 1, 0, 0]], [[0] * 4]], 2, [0.5], [1 / 3], 0.5, 1 / 3),
    # second image predicts class 1 where there is none: it counts, with Dice 0
    ("fp_image", [[[1, 0, 1, 0]], [[1, 0, 0, 0]]], [[[1, 1, 0, 0]], [[0] * 4]], 2, [1 / 4], [1 / 6], 1 / 4, 1 / 6),
    # empty prediction where the label has the class
    ("empty_prediction", [[[0, 0, 0, 0]], [[1, 1, 0, 0]]], [[[1, 0, 0, 0]], [[1, 1, 0, 0]]], 2, [0.5], [0.5], 0.5, 0.5),
    # wrong predictions on void pixels are ignored: perfect
    ("void_ignored", [[[1, 2, 0, 2]]], [[[1, V, 0, V]]], 3, [1.0, NAN], [1.0, NAN], 1.0, 1.0),
    # a class predicted only on void pixels is absent
    ("void_only_prediction", [[[2, 1, 1, 0]]], [[[V, 1, 0, 0]]], 3, [2 / 3, NAN], [0.5, NAN], 2 / 3, 0.5),
    ("nothing_present", [[[0, 0], [0, 0]]], [[[0, 0], [0, V]]], 3, [NAN, NAN], [NAN, NAN], NAN, NAN),
]


def assert_close(actual: float, expected: float, tol: float = 1e-9) -> None:
    if math.isnan(expected):
        assert math.isnan(actual), f"expected NaN, got {actual}"
    else:
        assert actual == pytest.approx(expected, abs=tol)


@pytest.mark.parametrize("name,pred,label,k,dice_c,iou_c,dice,miou", HAND_CASES, ids=[c[0] for c in HAND_CASES])
def test_dice_iou_hand_cases(name, pred, label, k, dice_c, iou_c, dice, miou):
    results = segmentation_metrics(logits_for(pred, k), label_of(label), k)
    for c, (d, i) in enumerate(zip(dice_c, iou_c), start=1):
        assert_close(results[f"dice_class{c}"], d)
        assert_close(results[f"iou_class{c}"], i)
    assert_close(results["dice"], dice)
    assert_close(results["miou"], miou)


@pytest.mark.parametrize(
    "name,pred,label,k,expected_map",
    [
        ("perfect", [[[0, 1, 1], [2, 2, 0]]], [[[0, 1, 1], [2, 2, 0]]], 3, 1.0),
        ("wholly_wrong_no_detection", [[[0, 0], [0, 0]]], [[[1, 1], [1, 1]]], 2, 0.0),
        ("swapped", [[[2, 2], [1, 1]]], [[[1, 1], [2, 2]]], 3, 0.0),
        # class 2 has detections but no positives: left out; class 1 detected with IoU 1/2 -> TP
        ("no_positive_class_left_out", [[[1, 2, 1, 0]]], [[[1, 0, 0, 0]]], 3, 1.0),
        # IoU 1/3 < 0.5: false positive, AP 0
        ("iou_below_threshold", [[[1, 0, 1, 1]]], [[[1, 1, 0, 0]]], 2, 0.0),
        ("nothing_present", [[[0, 0]]], [[[0, 0]]], 2, NAN),
        ("void_only_positive", [[[1, 0]]], [[[V, 0]]], 2, NAN),
    ],
)
def test_map50_hand_cases(name, pred, label, k, expected_map):
    assert_close(segmentation_metrics(logits_for(pred, k), label_of(label), k)["map50"], expected_map)


def test_map50_ranking_by_mean_probability():
    """Detections ranked by mean probability: FP(0.95), TP(0.9), FP(0.8) with 2 positives -> AP = 0.5 * 0.5."""
    pred = [[[1, 1, 0, 0]], [[1, 0, 1, 0]], [[1, 0, 0, 0]]]
    label = [[[1, 1, 0, 0]], [[1, 1, 0, 0]], [[0, 0, 0, 0]]]
    results = segmentation_metrics(logits_for(pred, 2, [0.9, 0.8, 0.95]), label_of(label), 2)
    assert results["ap50_class1"] == pytest.approx(0.25)
    # re-ranked so that the TP comes first: AP = 1 * 0.5
    results = segmentation_metrics(logits_for(pred, 2, [0.99, 0.8, 0.95]), label_of(label), 2)
    assert results["map50"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "scores,hits,positives,expected",
    [
        ([0.9, 0.9], [True, False], 1, 0.5),  # tied scores are one threshold whatever their order
        ([0.9, 0.9], [False, True], 1, 0.5),
        ([0.9, 0.8], [True, False], 1, 1.0),
        # precision 0, 1/2, 2/3 at recall 0, 1/2, 1: the interpolated precision at recall 1/2 is 2/3
        ([0.9, 0.8, 0.7], [False, True, True], 2, 2 / 3),
        ([0.9, 0.8, 0.7], [True, False, True], 2, 0.5 * 1 + 0.5 * (2 / 3)),
        ([], [], 3, 0.0),
        ([0.5], [False], 0, NAN),
    ],
)
def test_average_precision_table(scores, hits, positives, expected):
    assert_close(average_precision(torch.tensor(scores), torch.tensor(hits), positives), expected)


def test_weighted_ce_matches_manual():
    """CE = sum w[y] * -log p_y / sum w[y] over non-void pixels, w = [0.25, 1, 1]."""
    logits = torch.tensor([[[[2.0, -1.0, 0.5]], [[0.0, 1.0, 0.0]], [[-1.0, 0.0, 3.0]]]])  # (1, 3, 1, 3)
    label = torch.tensor([[[[0, 1, V]]]])
    logp = torch.log_softmax(logits.double(), 1)[0, :, 0]
    expected = (0.25 * -logp[0, 0] + 1.0 * -logp[1, 1]) / 1.25
    assert segmentation_metrics(logits, label, 3)["ce"] == pytest.approx(float(expected), rel=1e-6)
    results = segmentation_metrics(logits, label, 3, background_weight=1.0)
    assert results["ce"] == pytest.approx(float((-logp[0, 0] - logp[1, 1]) / 2), rel=1e-6)


def test_volumes_are_scored_as_slices_plus_volume_dice():
    # one case, H=1, W=2, D=2 (maps indexed [w][d]); GT: slice0 [1, 1], slice1 [0, 0]; prediction: [1, 0], [1, 0]
    gt = torch.tensor([[1, 0], [1, 0]]).view(1, 1, 1, 2, 2)
    pred = torch.tensor([[1, 1], [0, 0]]).view(1, 1, 2, 2)  # (B, H, W, D)
    logits = 4.0 * torch.nn.functional.one_hot(pred, 2).permute(0, 4, 1, 2, 3).float()  # (B, K, H, W, D)
    results = segmentation_metrics(logits, gt, 2)
    # slice 0: TP1 FP0 FN1 -> 2/3; slice 1: TP0 FP1 FN0 -> 0; mean 1/3. Volume: TP1 FP1 FN1 -> 1/2
    assert results["dice"] == pytest.approx(1 / 3)
    assert results["volume_dice"] == pytest.approx(0.5)
    assert results["volume_dice_class1"] == pytest.approx(0.5)
    assert volume_dice(logits, gt, 2).tolist() == [[0.5]]
    assert volume_dice(pred.unsqueeze(1), gt, 2).tolist() == [[0.5]]
    # the slice metrics are exactly those of the B*D slices given as images
    as_images = segmentation_metrics(to_slices(logits), to_slices(gt), 2)
    assert {k: v for k, v in results.items() if "volume" not in k} == pytest.approx(as_images)


def test_to_slices_order():
    x = torch.arange(2 * 1 * 1 * 1 * 3).view(2, 1, 1, 1, 3)
    assert to_slices(x).flatten().tolist() == [0, 1, 2, 3, 4, 5]
    assert to_slices(torch.zeros(2, 3, 4, 5)).shape == (2, 3, 4, 5)


def test_confusion_counts_and_errors():
    counts = confusion_counts(torch.tensor([[0, 1, 1, 2]]), torch.tensor([[0, 1, 2, V]]), 3)
    assert counts.tolist() == [[[1, 0, 0], [1, 1, 0], [0, 0, 1]]]
    with pytest.raises(ValueError, match=r"label values \[7\] are outside 0..2"):
        confusion_counts(torch.tensor([[0, 1]]), torch.tensor([[0, 7]]), 3)
    with pytest.raises(ValueError, match="differs from label shape"):
        confusion_counts(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="one channel"):
        segmentation_metrics(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), 2)
    with pytest.raises(ValueError, match="num_classes=3"):
        segmentation_metrics(torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 2, 2), 3)


@pytest.mark.parametrize(
    "num_classes,names,expected",
    [(3, None, ["class1", "class2"]), (3, ["bg", "a", "b"], ["a", "b"]), (3, ["a", "b"], ["a", "b"])],
)
def test_class_keys(num_classes, names, expected):
    assert class_keys(num_classes, names) == expected
    with pytest.raises(ValueError, match="class_names has 1 entries"):
        class_keys(3, ["a"])


# ---- brute-force pure-Python reference ------------------------------------------------------------------------------


def brute_force(logits: torch.Tensor, label: torch.Tensor, k: int) -> dict[str, float]:
    """Per-pixel Python loops over nested lists: Dice/IoU means and mAP@0.5 by threshold enumeration."""
    probs = torch.softmax(logits.double(), 1).tolist()
    raw = logits.tolist()
    lab = label[:, 0].tolist()
    n, h, w = len(lab), len(lab[0]), len(lab[0][0])
    dice_per_class, iou_per_class, ap_per_class = [], [], []
    for c in range(1, k):
        dices, ious, detections, positives = [], [], [], 0
        for i in range(n):
            tp = fp = fn = 0
            prob_sum, pred_size = 0.0, 0
            for y in range(h):
                for x in range(w):
                    t = lab[i][y][x]
                    if t == V:
                        continue
                    pixel = [raw[i][j][y][x] for j in range(k)]
                    p = max(range(k), key=lambda j: (pixel[j], -j))  # argmax of the logits, first maximum
                    if p == c:
                        prob_sum += probs[i][c][y][x]
                        pred_size += 1
                    tp += p == c and t == c
                    fp += p == c and t != c
                    fn += p != c and t == c
            if tp + fp + fn:
                dices.append(2 * tp / (2 * tp + fp + fn))
                ious.append(tp / (tp + fp + fn))
            positives += (tp + fn) > 0
            if pred_size:
                detections.append((prob_sum / pred_size, tp / (tp + fp + fn) >= 0.5))
        dice_per_class.append(sum(dices) / len(dices) if dices else None)
        iou_per_class.append(sum(ious) / len(ious) if ious else None)
        if positives == 0:
            ap_per_class.append(None)
            continue
        points = []  # (recall, precision) at every distinct score threshold
        for threshold in sorted({s for s, _ in detections}, reverse=True):
            kept = [hit for s, hit in detections if s >= threshold]
            points.append((sum(kept) / positives, sum(kept) / len(kept)))
        ap, previous = 0.0, 0.0
        for idx, (r, _) in enumerate(points):
            ap += (r - previous) * max(p for rr, p in points[idx:] if rr >= r)
            previous = r
        ap_per_class.append(ap)

    def mean(values):
        present = [v for v in values if v is not None]
        return sum(present) / len(present) if present else math.nan

    return {"dice": mean(dice_per_class), "miou": mean(iou_per_class), "map50": mean(ap_per_class)}


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_matches_brute_force_on_random_cases(seed):
    gen = torch.Generator().manual_seed(seed)
    rnd = random.Random(seed)
    k = rnd.choice([2, 3, 4])
    n, h, w = rnd.randint(4, 9), rnd.randint(2, 5), rnd.randint(2, 5)
    label = torch.randint(0, k, (n, 1, h, w), generator=gen)
    label[torch.rand(label.shape, generator=gen) < 0.1] = V
    # logits correlated with the label so that there are true positives as well as errors
    clean = label.clone()
    clean[clean == V] = 0
    logits = torch.randn(n, k, h, w, generator=gen) + 0.8 * torch.nn.functional.one_hot(clean[:, 0], k).permute(
        0, 3, 1, 2
    )
    # duplicate an image to create tied detection scores
    logits[-1], label[-1] = logits[0], label[0]
    ours = segmentation_metrics(logits, label, k)
    reference = brute_force(logits, label, k)
    for key in ("dice", "miou", "map50"):
        assert_close(ours[key], reference[key], tol=1e-9)


# ------------------------------------------------------------------------------------- CE precision, logit checks


def confident_logits(scale: float, n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 logits (n, k, 1, 1) of one pixel per item, the pixel's class ahead by about ``2 * scale``: the
    per-pixel CE is about ``(k - 1) * exp(-2 * scale)`` (0.3 at scale 1, 1e-26 at scale 30)."""
    gen = torch.Generator().manual_seed(seed)
    label = torch.randint(0, k, (n,), generator=gen)
    z = -1.0 + 0.3 * torch.randn(n, k, generator=gen)
    z[torch.arange(n), label] = 1.0 + 0.1 * torch.rand(n, generator=gen)
    return (scale * z).float().view(n, k, 1, 1), label.view(n, 1, 1, 1)


def mp_cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> list[tuple[float, float]]:
    """(CE, softmax probability of the argmax) per item, in 50-digit arithmetic from the exact float32 values."""
    import mpmath

    mpmath.mp.dps = 50
    out = []
    for row, y in zip(logits[:, :, 0, 0].double().tolist(), label.view(-1).tolist()):
        values = [mpmath.mpf(v) for v in row]
        log_z = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in values))
        out.append((float(log_z - values[y]), float(mpmath.exp(max(values) - log_z))))
    return out


@pytest.mark.parametrize("scale", [1, 2, 3, 5, 8, 10, 15, 20, 25, 30])
@pytest.mark.parametrize("labels", ["argmax", "shuffled"])
def test_ce_within_1e_6_of_a_float64_reference(scale, labels):
    """Per pixel and over the dataset, CE and the detection score agree with 50-digit arithmetic to 1e-6 (relative)
    at every logit scale; the float32 ``logsumexp - logit`` was 6% off at CE 1.7e-6 and read 0 below ~1e-8."""
    k, n = 3, 48
    logits, label = confident_logits(scale, n, k, seed=scale)
    if labels == "shuffled":  # a third of the pixels labelled with another class: large, non-cancelling CE
        label = label.clone()
        label[::3] = (label[::3] + 1) % k
    reference = mp_cross_entropy(logits, label)
    stats = slice_statistics(logits, label, background_weight=0.25)
    weights = torch.tensor([0.25, 1.0, 1.0], dtype=torch.float64)[label.view(-1)]
    ce = stats["ce_sum"] / weights  # one pixel per item
    for i, (expected_ce, expected_prob) in enumerate(reference):
        assert expected_ce > 0
        assert float(ce[i]) == pytest.approx(expected_ce, rel=1e-6, abs=0), (i, expected_ce)
        pred = int(logits[i, :, 0, 0].argmax())
        if pred > 0:
            assert float(stats["scores"][i, pred - 1]) == pytest.approx(expected_prob, rel=1e-6), i
    expected_mean = sum(w * c for w, (c, _) in zip(weights.tolist(), reference)) / float(weights.sum())
    images = logits.view(1, n, k).permute(0, 2, 1).reshape(1, k, n, 1)  # the same pixels as one image
    ce_mean = segmentation_metrics(images, label.view(1, 1, n, 1), background_weight=0.25)["ce"]
    assert ce_mean == pytest.approx(expected_mean, rel=1e-6, abs=0)


def test_ce_of_a_confident_pixel_is_not_zero():
    """The issue's example: CE 1.7e-6 (was 6% off) and 5e-13 (read as 0)."""
    for gap in (13.285, 28.324):  # log(2 / 1.7e-6), log(1 / 5e-13)
        logits = torch.tensor([gap, 0.0, 0.0]).view(1, 3, 1, 1)
        expected = math.log1p(2 * math.exp(-gap))
        ce = segmentation_metrics(logits, torch.zeros(1, 1, 1, 1, dtype=torch.long), background_weight=1.0)["ce"]
        assert ce == pytest.approx(expected, rel=1e-9)


def softmax_of(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=1)


def one_hot_of(logits: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1]).movedim(-1, 1).float()


@pytest.mark.parametrize(
    "make, kind",
    [(softmax_of, "probabilities"), (one_hot_of, "a one-hot map")],
)
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 6, 6, 4)])
def test_probabilities_and_one_hot_maps_are_refused(make, kind, shape):
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 3
    label = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]))
    segmentation_metrics(logits, label)  # raw logits: fine
    with pytest.raises(ValueError, match=f"expect raw logits .* but got {kind}"):
        segmentation_metrics(make(logits), label)
    with pytest.raises(ValueError, match="raw logits"):
        slice_statistics(make(logits).half(), label)


def test_logit_like_inputs_in_the_unit_interval_are_accepted():
    """Values in [0, 1] whose channels do not sum to 1, or sum to 1 only at some pixels, are logits."""
    gen = torch.Generator().manual_seed(1)
    check_logits(torch.rand(2, 3, 5, 5, generator=gen))
    almost = torch.softmax(torch.randn(2, 3, 5, 5, generator=gen), 1)
    almost[0, :, 0, 0] = torch.tensor([0.5, 0.4, 0.05])
    check_logits(almost)
    check_logits(torch.zeros(1, 2, 4, 4))  # an untrained zero head
    check_logits(torch.ones(1, 1, 4, 4))  # one channel: nothing to tell
