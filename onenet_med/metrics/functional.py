"""Segmentation metrics as vectorised torch functions: our definitions (SPEC §5), stated once here.

Definitions (every report repeats them, see :data:`DEFINITIONS`):

- Void pixels (label ``ignore_index`` = 255) are ignored everywhere: they are neither ground truth nor prediction
  of any class, and they do not enter the cross-entropy.
- An *image* is one 2D slice. Volumes (B, C, H, W, D) are treated as B*D axial slices (the last axis is axial)
  for the slice-level metrics.
- Dice (DSC) and IoU: per class c >= 1 (background excluded) and per image, from the confusion counts
  TP, FP, FN of c: Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP + FP + FN). For each class, the mean over the
  images where c is present in the ground truth or the prediction (TP + FP + FN > 0); then the mean over classes.
  A class absent from both ground truth and prediction in every image has no value (NaN) and is left out of the
  class mean; when no class has a value, the mean is NaN.
- Per-volume Dice: the same Dice with the counts summed over the whole volume, per class per case; the summary is
  the mean over cases where the class is present (ground truth or prediction), then over classes.
- mAP@0.5: for each class c >= 1 and each image whose predicted mask of c (argmax of the logits) is non-empty, one
  detection scored by the mean softmax probability of c over that mask; it is a true positive when its IoU with
  the image's ground-truth mask of c is >= 0.5. Positives = images whose ground truth contains c. AP_c is the area
  under the all-point-interpolated precision-recall curve (precision made monotone from the right; tied scores
  form one threshold). mAP@0.5 = mean AP_c over the classes with at least one positive (NaN when none has).
- CE: weighted cross-entropy over non-void pixels with the loss's class weights ``[background_weight, 1, ..., 1]``,
  i.e. ``sum_i w[y_i] * CE_i / sum_i w[y_i]`` over all pixels of all images (PyTorch's weighted mean, the value
  the training loss reports for a batch, here for the whole dataset).

All functions take raw logits (B, K, H, W[, D]) and labels (B, 1, H, W[, D]) (int or float), like the networks and
data of this package; probabilities or one-hot maps in place of logits are refused (:func:`check_logits`). The CE
of each pixel is computed in float64 as ``(max logit - logit_y) + log1p(sum_{j != argmax} exp(logit_j - max))``,
exact to float64 precision even for confident pixels (``logsumexp - logit_y`` in float32 reads a CE of 1e-6 several
percent off and one of 1e-12 as 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from onenet_med.engine.losses import IGNORE_INDEX, class_weights, prepare_label

__all__ = [
    "DEFINITIONS",
    "IGNORE_INDEX",
    "average_precision",
    "check_logits",
    "class_keys",
    "confusion_counts",
    "dice_from_counts",
    "iou_from_counts",
    "mean_average_precision",
    "mean_over_present",
    "results_from_statistics",
    "segmentation_metrics",
    "slice_statistics",
    "to_slices",
    "volume_dice",
]

DEFINITIONS: dict[str, str] = {
    "void": "pixels labelled 255 are ignored by every metric and by the loss",
    "image": "one 2D slice; volumes are scored as their axial (last-axis) slices",
    "dice": "per class c>=1 and image: 2TP/(2TP+FP+FN); mean over images where c is in the ground truth or the "
    "prediction; then mean over classes (classes never present are left out)",
    "miou": "as dice with IoU = TP/(TP+FP+FN)",
    "volume_dice": "Dice per class per 3D case (counts over the whole volume); mean over cases where the class is "
    "present, then over classes",
    "map50": "per class c>=1, one detection per image with a non-empty predicted mask, scored by the mean "
    "probability of c over it, true positive when IoU with the ground-truth mask of c >= 0.5; positives = images "
    "containing c; AP = area under the all-point-interpolated precision-recall curve; mean over classes with a "
    "positive",
    "ce": "weighted cross-entropy sum_i w[y_i] CE_i / sum_i w[y_i] over non-void pixels, w = [background_weight, 1, "
    "..., 1] as in the loss",
}


def _plain(x: torch.Tensor) -> torch.Tensor:
    """Drop MONAI MetaTensor metadata (cheaper arithmetic, plain results)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def to_slices(x: torch.Tensor) -> torch.Tensor:
    """Volumes as axial slices: (B, C, H, W, D) -> (B*D, C, H, W), slices of case b at rows b*D..b*D+D-1.

    4D inputs (B, C, H, W) are returned unchanged.
    """
    if x.ndim == 4:
        return x
    if x.ndim != 5:
        raise ValueError(f"expected (B, C, H, W) images or (B, C, H, W, D) volumes, got shape {tuple(x.shape)}")
    b, c, h, w, d = x.shape
    return x.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)


def _check_labels(target: torch.Tensor, valid: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Clear error for label values that are neither a class index nor the void value."""
    bad = valid & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        values = sorted(set(target[bad].unique().tolist()))[:10]
        raise ValueError(
            f"label values {values} are outside 0..{num_classes - 1} and not the void value {ignore_index} "
            f"(num_classes={num_classes}); check the task's num_classes and the label files"
        )


def check_logits(logits: torch.Tensor, tolerance: float = 1e-3) -> None:
    """Refuse probabilities and one-hot maps where raw logits are expected.

    Softmax outputs or one-hot label maps give the same argmax, so Dice would look right, but CE and the mAP
    scores would be computed from a second softmax and be wrong without a sign. Such an input has every value in
    [0, 1] and channels summing to 1 at every pixel, which the logits of a network practically never do.

    Raises:
        ValueError: saying what the input looks like and what to pass instead.
    """
    if logits.shape[1] < 2 or logits.numel() == 0:
        return
    low, high = logits.aminmax()
    if float(low) < 0 or float(high) > 1:
        return
    sums = logits.sum(dim=1, dtype=torch.float64)
    if bool(((sums - 1).abs() <= tolerance).all()):
        kind = "a one-hot map" if bool(((logits == 0) | (logits == 1)).all()) else "probabilities (softmax output)"
        raise ValueError(
            f"the metrics expect raw logits (B, K, ...) but got {kind}: every value lies in [0, 1] and the "
            f"{logits.shape[1]} channels sum to 1 at every pixel; pass the network's output before softmax / "
            "argmax (CE and mAP would be wrong otherwise)"
        )


def _others_sum(logits: torch.Tensor, top: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """``sum over j != pred of exp(logit_j - top)`` per pixel in float64, one channel at a time (no float64 copy
    of the whole logit map)."""
    top = top.double()
    total = torch.zeros_like(top)
    for j in range(logits.shape[1]):
        term = torch.exp(logits[:, j].double() - top)
        total += torch.where(pred == j, 0.0, term)
    return total


def _counts_by_item(
    item: torch.Tensor, target: torch.Tensor, pred: torch.Tensor, valid: torch.Tensor, n: int, k: int
) -> torch.Tensor:
    """(n, k, 3) TP/FP/FN from per-pixel item ids, labels, predictions and the non-void mask (one bincount)."""
    code = torch.where(valid, (item * k + target) * k + pred, n * k * k)  # void pixels go to a spare last bin
    confusion = torch.bincount(code.reshape(-1), minlength=n * k * k + 1)[:-1].view(n, k, k)  # [item, true, pred]
    tp = confusion.diagonal(dim1=1, dim2=2)
    fp = confusion.sum(dim=1) - tp
    fn = confusion.sum(dim=2) - tp
    return torch.stack([tp, fp, fn], dim=-1)


def confusion_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Per-item confusion counts of every class, void pixels ignored.

    Args:
        pred: (N, ...) predicted class indices (integer).
        target: (N, ...) ground-truth class indices, same shape; ``ignore_index`` marks void pixels.
        num_classes: K.
        ignore_index: void label value.

    Returns:
        int64 tensor (N, K, 3) holding TP, FP, FN of each class in each item (all spatial dims of an item pooled).
    """
    pred, target = _plain(pred).long(), _plain(target).long()
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
    n, k = pred.shape[0], int(num_classes)
    valid = target != ignore_index
    _check_labels(target, valid, k, ignore_index)
    if bool(((pred < 0) | (pred >= k)).any()):
        raise ValueError(f"predicted class indices must lie in 0..{k - 1}")
    item = torch.arange(n, device=pred.device).view(-1, *([1] * (pred.ndim - 1)))
    return _counts_by_item(item, target, pred, valid, n, k)


def dice_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Dice 2TP/(2TP+FP+FN) from (..., 3) counts; NaN where the class is in neither label nor prediction."""
    counts = counts.double()
    tp, fp, fn = counts.unbind(-1)
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.full_like(tp, math.nan))


def iou_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """IoU TP/(TP+FP+FN) from (..., 3) counts; NaN where the class is in neither label nor prediction."""
    counts = counts.double()
    tp, fp, fn = counts.unbind(-1)
    union = tp + fp + fn
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


def mean_over_present(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Mean over ``dim`` ignoring NaN (absent) entries; NaN where every entry is absent."""
    return torch.nanmean(values, dim=dim)


def slice_statistics(
    logits: torch.Tensor,
    label: torch.Tensor,
    num_classes: int | None = None,
    background_weight: float = 0.25,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """Everything the metrics need from one batch, compact (no probability maps are kept).

    One pass over the logits: log-sum-exp and max give the CE, the argmax prediction and its probability; one
    ``bincount`` gives the per-slice confusion counts and another the per-slice detection scores. Volumes are not
    copied into slices: slice ``d`` of case ``b`` is item ``b * D + d``.

    Args:
        logits: (B, K, H, W) images or (B, K, H, W, D) volumes, raw network outputs.
        label: (B, 1, H, W[, D]) class indices (int or float), void = ``ignore_index``.
        num_classes: K (defaults to the logits' channel count, which must agree when given).
        background_weight: CE weight of class 0.
        ignore_index: void label value.

    Returns:
        dict with ``counts`` (N, K-1, 3) int64 TP/FP/FN per image (N = B, or B*D for volumes) and foreground class,
        ``scores`` (N, K-1) float64 mean probability of the class over its predicted mask (NaN when empty),
        ``volume_counts`` (B, K-1, 3) for volumes (absent for images), ``ce_sum`` and ``ce_weight`` (B,) float64
        (per input item: image or volume), all on the CPU.
    """
    logits = _plain(logits)
    k = logits.shape[1]
    if num_classes is not None and int(num_classes) != k:
        raise ValueError(f"logits have {k} channels but num_classes={num_classes}")
    if logits.ndim not in (4, 5):
        raise ValueError(f"logits must be (B, K, H, W) or (B, K, H, W, D), got shape {tuple(logits.shape)}")
    target = prepare_label(_plain(label), logits.ndim).to(logits.device)
    if target.shape[0] != logits.shape[0] or target.shape[1:] != logits.shape[2:]:
        raise ValueError(f"label shape {tuple(label.shape)} does not match logits shape {tuple(logits.shape)}")
    b = logits.shape[0]
    with torch.no_grad():
        logits = logits.float()
        check_logits(logits)
        valid = target != ignore_index
        _check_labels(target, valid, k, ignore_index)
        safe_target = torch.where(valid, target, 0)
        top, pred = logits.max(dim=1)  # argmax of the logits (first index on ties)
        others = _others_sum(logits, top, pred)  # sum over j != argmax of exp(logit_j - top), float64
        prob = 1.0 / (1.0 + others)  # softmax probability of the predicted class
        # weighted CE: w[y] * CE, CE = (top - logit_y) + log1p(others) = logsumexp - logit_y without the float32
        # cancellation that reads a confident pixel's CE (1e-6 and below) as 0 or several % off
        pixel_weight = class_weights(k, background_weight).to(logits.device)[safe_target] * valid
        logit_y = logits.gather(1, safe_target.unsqueeze(1)).squeeze(1)
        nll = (top.double() - logit_y.double()) + torch.log1p(others)
        ce_sum = (nll * pixel_weight).flatten(1).sum(1)
        ce_weight = pixel_weight.double().flatten(1).sum(1)
        # item (slice) id of every pixel
        if logits.ndim == 5:
            d = logits.shape[-1]
            item = torch.arange(b, device=logits.device).view(b, 1, 1, 1) * d + torch.arange(
                d, device=logits.device
            ).view(1, 1, 1, d)
        else:
            item = torch.arange(b, device=logits.device).view(b, 1, 1)
        n = b * (logits.shape[-1] if logits.ndim == 5 else 1)
        counts = _counts_by_item(item, target, pred, valid, n, k)
        index = torch.where(valid, item * k + pred, n * k).reshape(-1)
        sums = torch.bincount(index, weights=torch.where(valid, prob, 0.0).reshape(-1), minlength=n * k + 1)
        sizes = torch.bincount(index, minlength=n * k + 1)[:-1].view(n, k)
        scores = torch.where(sizes > 0, sums[:-1].view(n, k) / sizes.clamp_min(1), math.nan)
    out: dict[str, torch.Tensor] = {
        "counts": counts[:, 1:].cpu(),
        "scores": scores[:, 1:].cpu(),
        "ce_sum": ce_sum.cpu(),
        "ce_weight": ce_weight.cpu(),
    }
    if logits.ndim == 5:
        out["volume_counts"] = out["counts"].view(b, -1, k - 1, 3).sum(dim=1)
    return out


def average_precision(scores: torch.Tensor, is_tp: torch.Tensor, num_positives: int) -> float:
    """Area under the all-point-interpolated precision-recall curve.

    Args:
        scores: (M,) detection scores.
        is_tp: (M,) bool, whether each detection is a true positive.
        num_positives: number of ground-truth positives.

    Returns:
        AP in [0, 1]; NaN when ``num_positives`` is 0; 0 when there are positives but no detections.
    """
    if num_positives <= 0:
        return math.nan
    scores = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if scores.numel() == 0:
        return 0.0
    order = torch.argsort(scores, descending=True, stable=True)
    s = scores[order]
    hits = torch.as_tensor(is_tp, dtype=torch.float64).reshape(-1)[order]
    tp = torch.cumsum(hits, 0)
    fp = torch.cumsum(1.0 - hits, 0)
    # tied scores are one threshold: keep the last position of each run of equal scores
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp, fp = tp[last], fp[last]
    recall = tp / num_positives
    precision = tp / (tp + fp)
    envelope = torch.flip(torch.cummax(torch.flip(precision, [0]), 0).values, [0])
    previous = torch.cat([recall.new_zeros(1), recall[:-1]])
    return float(((recall - previous) * envelope).sum())


def mean_average_precision(
    counts: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5
) -> tuple[float, torch.Tensor]:
    """mAP at an IoU threshold from per-image counts and scores (see the module docstring).

    Args:
        counts: (N, C, 3) TP/FP/FN per image and foreground class.
        scores: (N, C) mean predicted probability over the predicted mask (NaN when the mask is empty).
        iou_threshold: IoU a detection needs to be a true positive.

    Returns:
        (mAP, AP per class (C,) float64 with NaN for classes without positives).
    """
    counts = counts.double()
    tp, fp, fn = counts.unbind(-1)
    detected = (tp + fp) > 0
    hit = tp >= iou_threshold * (tp + fp + fn)
    positives = ((tp + fn) > 0).sum(dim=0)
    ap = torch.tensor(
        [
            average_precision(scores[detected[:, c], c], hit[detected[:, c], c], int(positives[c]))
            for c in range(counts.shape[1])
        ],
        dtype=torch.float64,
    )
    return float(torch.nanmean(ap)) if bool((~ap.isnan()).any()) else math.nan, ap


def volume_dice(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Per-case Dice of each foreground class over whole volumes.

    Args:
        pred: (B, K, H, W, D) logits, or (B, 1, H, W, D) predicted class indices (integer dtype).
        label: (B, 1, H, W, D) ground truth.
        num_classes: K.

    Returns:
        float64 (B, K-1); NaN where the class is in neither the case's label nor its prediction.
    """
    pred = _plain(pred)
    if pred.is_floating_point():
        pred = pred.argmax(dim=1)
    else:
        pred = pred[:, 0] if pred.ndim == label.ndim else pred
    target = prepare_label(_plain(label), pred.ndim + 1)
    return dice_from_counts(confusion_counts(pred, target, num_classes, ignore_index)[:, 1:])


def class_keys(num_classes: int, class_names: Sequence[str] | None = None) -> list[str]:
    """Names of the foreground classes 1..K-1 used in result keys (``dice_<name>``).

    ``class_names`` may list all K classes (background first, dropped) or only the K-1 foreground classes;
    without names the keys are ``class1 .. class{K-1}``.
    """
    k = int(num_classes)
    if class_names is None:
        return [f"class{c}" for c in range(1, k)]
    names = [str(n) for n in class_names]
    if len(names) == k:
        return names[1:]
    if len(names) == k - 1:
        return names
    raise ValueError(f"class_names has {len(names)} entries, expected {k} (with background) or {k - 1}")


def results_from_statistics(
    counts: torch.Tensor,
    scores: torch.Tensor,
    ce_sum: torch.Tensor | float,
    ce_weight: torch.Tensor | float,
    volume_counts: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """The flat result dict from accumulated statistics.

    Returns:
        ``ce``, ``dice``, ``miou``, ``map50`` and per class ``dice_<name>``, ``iou_<name>``, ``ap50_<name>``; with
        volumes also ``volume_dice`` and ``volume_dice_<name>``. Absent values are NaN.
    """
    names = class_keys(counts.shape[1] + 1, class_names)
    dice = mean_over_present(dice_from_counts(counts), 0)
    iou = mean_over_present(iou_from_counts(counts), 0)
    map50, ap = mean_average_precision(counts, scores, 0.5)
    ce_sum, ce_weight = float(torch.as_tensor(ce_sum).sum()), float(torch.as_tensor(ce_weight).sum())
    results: dict[str, float] = {
        "ce": ce_sum / ce_weight if ce_weight > 0 else math.nan,
        "dice": float(torch.nanmean(dice)),
        "miou": float(torch.nanmean(iou)),
        "map50": map50,
    }
    if volume_counts is not None:
        vdice = mean_over_present(dice_from_counts(volume_counts), 0)
        results["volume_dice"] = float(torch.nanmean(vdice))
    for c, name in enumerate(names):
        results[f"dice_{name}"] = float(dice[c])
        results[f"iou_{name}"] = float(iou[c])
        results[f"ap50_{name}"] = float(ap[c])
        if volume_counts is not None:
            results[f"volume_dice_{name}"] = float(vdice[c])
    return results


def segmentation_metrics(
    logits: torch.Tensor,
    label: torch.Tensor,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    background_weight: float = 0.25,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, float]:
    """All metrics of one set of predictions at once (the reference the Ignite metrics accumulate to).

    Args:
        logits: (B, K, H, W) or (B, K, H, W, D) raw outputs.
        label: (B, 1, H, W[, D]) class indices, void = ``ignore_index``.
        num_classes: K (checked against the logits).
        class_names: names for the per-class keys (K with background, or K-1).
        background_weight: CE weight of the background.
        ignore_index: void value.

    Returns:
        the flat dict of :func:`results_from_statistics`.
    """
    stats = slice_statistics(logits, label, num_classes, background_weight, ignore_index)
    return results_from_statistics(
        stats["counts"],
        stats["scores"],
        stats["ce_sum"],
        stats["ce_weight"],
        stats.get("volume_counts"),
        class_names,
    )
