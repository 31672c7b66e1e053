"""Cohort tables and statistics of ``onenet-med predict``: ``volumes.csv``, the outlier flag of the quality score,
agreement with reference labels (Dice, volume differences, Bland-Altman, correlation) and its report.

Definitions (stated once here; the README and the reports repeat them):

- Quality score ``uncertainty``: mean normalised predictive entropy over the voxels predicted as foreground
  (:meth:`onenet_med.inference.PredictionResult.case_uncertainty`), 0 = every foreground voxel certain,
  1 = every class equally likely everywhere.
- Outlier flag (:func:`robust_z_scores`, :func:`flag_cases`): robust z-score ``0.6745 (u - median) / MAD`` of the
  score in the cohort (Iglewicz and Hoaglin's modified z-score; MAD = median absolute deviation); a case is flagged
  ``outlier`` when z > :data:`OUTLIER_Z` (only unusually *uncertain* cases are flagged). When MAD is 0 (more than half
  the cases share one score), ``(u - median) / (1.2533 * mean absolute deviation)`` is used; when that is 0 too, no
  case is an outlier.
- Bland-Altman (:func:`bland_altman`): differences d = predicted - reference; bias = mean(d); limits of agreement =
  bias +- 1.96 SD(d), SD with n - 1 degrees of freedom.
- Pearson r (:func:`pearson`) and Spearman rho (:func:`spearman`: Pearson r of the ranks, ties get their mean rank).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onenet_med.engine.atomic import atomic_write_text

__all__ = [
    "OUTLIER_Z",
    "bland_altman",
    "case_agreement",
    "agreement_statistics",
    "flag_cases",
    "json_safe",
    "label_for",
    "pearson",
    "read_label_map",
    "reference_labels",
    "robust_z_scores",
    "spearman",
    "volume_table_columns",
    "write_agreement_report",
    "write_volume_table",
]

#: robust z-score above which a case's quality score is flagged (Iglewicz and Hoaglin's 3.5)
OUTLIER_Z = 3.5
#: 1 / the 0.75 quantile of the standard normal: makes the MAD a consistent estimate of the SD
_MAD_SCALE = 0.6745
#: mean absolute deviation to SD of a normal (sqrt(pi / 2)), for the MAD = 0 fallback
_MEAN_AD_SCALE = 1.2533


# ------------------------------------------------------------------------------------------ statistics


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by ``None``: strict JSON (``null``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def _finite_pairs(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two 1D sequences of equal length, got shapes {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def bland_altman(predicted: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """Bland-Altman agreement of paired measurements (pairs with a NaN are left out).

    Returns:
        ``n``, ``bias`` (mean of predicted - reference), ``sd`` (sample SD of the differences, n - 1),
        ``loa_low`` / ``loa_high`` (bias -+ 1.96 SD); NaN where n is too small (bias needs 1 pair, SD 2).
    """
    p, r = _finite_pairs(predicted, reference)
    d = p - r
    n = len(d)
    bias = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    return {"n": n, "bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of the finite pairs; NaN with fewer than 2 pairs or a constant side."""
    a, b = _finite_pairs(x, y)
    if len(a) < 2:
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / denom if denom > 0 else math.nan


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    values, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks, minlength=len(values))
    counts = np.bincount(inverse, minlength=len(values))
    return (sums / counts)[inverse]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of the finite pairs: Pearson r of the ranks (ties get their mean rank)."""
    a, b = _finite_pairs(x, y)
    return pearson(_ranks(a), _ranks(b)) if len(a) else math.nan


def robust_z_scores(values: Sequence[float]) -> np.ndarray:
    """Modified z-scores ``0.6745 (x - median) / MAD`` of the finite values (NaN stays NaN); see the module
    docstring for MAD = 0."""
    x = np.asarray(values, dtype=np.float64)
    z = np.full(x.shape, math.nan)
    finite = np.isfinite(x)
    if not finite.any():
        return z
    v = x[finite]
    median = float(np.median(v))
    mad = float(np.median(np.abs(v - median)))
    if mad > 0:
        z[finite] = _MAD_SCALE * (v - median) / mad
    else:
        mean_ad = float(np.mean(np.abs(v - median)))
        z[finite] = (v - median) / (_MEAN_AD_SCALE * mean_ad) if mean_ad > 0 else 0.0
    return z


def flag_cases(scores: Sequence[float | None], threshold: float = OUTLIER_Z) -> tuple[list[str], np.ndarray]:
    """Flags of the succeeded cases of a cohort from their quality scores (``uncertainty``).

    Returns:
        ``(flags, z)``: per case ``"outlier"`` (robust z > ``threshold``), ``"empty"`` (no foreground predicted:
        the score is NaN), ``"ok"``; and the robust z-scores.
    """
    values = np.array([math.nan if s is None else float(s) for s in scores], dtype=np.float64)
    z = robust_z_scores(values)
    flags = ["empty" if not math.isfinite(v) else "outlier" if zi > threshold else "ok" for v, zi in zip(values, z)]
    return flags, z


# ------------------------------------------------------------------------------------------ reference labels


def reference_labels(source: str | os.PathLike) -> dict[str, str]:
    """Reference label files of a cohort: ``{key: label path}``.

    ``source`` is a folder of label files named like the images (key: the file name) or an MSD ``dataset.json``
    whose ``training`` entries have labels (keys: the image's absolute path and its file name). Look an image up with
    :func:`label_for`.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: a ``.json`` that is not an MSD description with labelled entries.
    """
    path = Path(source)
    if path.is_dir():
        return {f.name: str(f) for f in sorted(path.iterdir()) if f.is_file() and not f.name.startswith(".")}
    if not path.is_file():
        raise FileNotFoundError(f"--labels {path}: no such folder or dataset.json")
    try:
        description = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"--labels {path}: not a JSON file ({error})") from error
    entries = [e for e in description.get("training", []) if isinstance(e, Mapping) and e.get("label")]
    if not entries:
        raise ValueError(f"--labels {path}: no 'training' entries with a 'label' (an MSD dataset.json)")
    labels: dict[str, str] = {}
    for entry in entries:
        image = os.path.normpath(path.parent / entry["image"])
        label = os.path.normpath(path.parent / entry["label"])
        labels[os.path.abspath(image)] = label
        labels.setdefault(os.path.basename(image), label)
    return labels


def label_for(labels: Mapping[str, str], image: str | os.PathLike) -> str | None:
    """The reference label of ``image`` in :func:`reference_labels`' mapping: by absolute path, else file name."""
    image = os.fspath(image)
    return labels.get(os.path.abspath(image)) or labels.get(os.path.basename(image))


def read_label_map(path: str | os.PathLike, shape: Sequence[int], num_classes: int) -> np.ndarray:
    """A reference label map as int64, checked against the prediction's shape and the classes.

    Raises:
        ValueError: other shape, or values outside 0..K-1 (the message names the file).
    """
    import nibabel as nib

    path = os.fspath(path)
    if path.endswith((".nii", ".nii.gz")):
        data = np.asanyarray(nib.load(path).dataobj)
    else:
        import SimpleITK as sitk

        data = np.transpose(sitk.GetArrayFromImage(sitk.ReadImage(path)))  # SimpleITK is z, y, x
    while data.ndim > len(shape) and data.shape[-1] == 1:  # (X, Y, Z, 1) label files
        data = data[..., 0]
    if tuple(data.shape) != tuple(shape):
        raise ValueError(f"{path}: label shape {tuple(data.shape)} differs from the image's {tuple(shape)}")
    if not np.allclose(data, np.round(data)):
        raise ValueError(f"{path}: labels must be integers")
    labels = np.round(data).astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{path}: label values {labels.min()}..{labels.max()} outside 0..{num_classes - 1}")
    return labels


def case_agreement(
    predicted: np.ndarray, reference: np.ndarray, voxel_volume_ml: float, class_names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per foreground class: ``dice`` (2TP / (2TP + FP + FN) over the volume, NaN when the class is in neither),
    ``reference_ml`` and ``difference_ml`` (predicted - reference volume)."""
    import torch

    from onenet_med.metrics import confusion_counts, dice_from_counts

    k = len(class_names)
    counts = confusion_counts(torch.as_tensor(predicted)[None], torch.as_tensor(reference)[None], k)[0]
    dice = dice_from_counts(counts).tolist()
    voxels_pred = np.bincount(predicted.ravel().astype(np.int64), minlength=k)
    voxels_ref = np.bincount(reference.ravel(), minlength=k)
    return {
        class_names[c]: {
            "dice": float(dice[c]),
            "reference_ml": float(voxels_ref[c]) * voxel_volume_ml,
            "difference_ml": float(voxels_pred[c] - voxels_ref[c]) * voxel_volume_ml,
        }
        for c in range(1, k)
    }


# ------------------------------------------------------------------------------------------ volumes.csv


def volume_table_columns(class_names: Sequence[str], agreement: bool) -> list[str]:
    """Columns of ``volumes.csv`` in order (foreground classes only; names as in the bundle)."""
    foreground = list(class_names[1:])
    columns = ["case", "input", "status", "error", "slices", "seconds"]
    columns += [f"volume_ml_{name}" for name in foreground]
    columns += ["augmentations", "uncertainty", "disagreement", "robust_z", "flag"]
    if agreement:
        columns += ["reference"]
        for name in foreground:
            columns += [f"dice_{name}", f"reference_ml_{name}", f"difference_ml_{name}"]
        columns += ["agreement_error"]
    return columns


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""  # an empty field: pandas reads NaN, R reads NA
    if isinstance(value, float):
        return repr(round(value, 6))
    return value


def write_volume_table(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Write ``volumes.csv`` atomically: a header, one row per case (missing values empty), comma-separated,
    quoted where needed (RFC 4180, what pandas, Excel and R read as they are).

    Raises:
        ValueError: a row with a column not in ``columns``.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        unknown = set(row) - set(columns)
        if unknown:
            raise ValueError(f"row of {row.get('case')} has columns not in the table: {sorted(unknown)}")
        writer.writerow({key: _cell(row.get(key)) for key in columns})
    atomic_write_text(path, buffer.getvalue())
    return os.fspath(path)


# ------------------------------------------------------------------------------------------ agreement report


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "class"


def agreement_statistics(rows: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per foreground class over the cases with a reference: Bland-Altman of the volumes (mL), Pearson and Spearman
    correlation of predicted and reference volumes, mean Dice."""
    stats: dict[str, dict[str, Any]] = {}
    for name in class_names[1:]:
        pairs = [
            (r[f"volume_ml_{name}"], r[f"reference_ml_{name}"], r.get(f"dice_{name}"))
            for r in rows
            if r.get(f"reference_ml_{name}") is not None
        ]
        predicted = [p for p, _, _ in pairs]
        reference = [q for _, q, _ in pairs]
        dice = [d for _, _, d in pairs if d is not None and math.isfinite(d)]
        stats[name] = {
            **bland_altman(predicted, reference),
            "pearson": pearson(predicted, reference),
            "spearman": spearman(predicted, reference),
            "mean_dice": float(np.mean(dice)) if dice else math.nan,
            "predicted_ml": predicted,
            "reference_ml": reference,
        }
    return stats


def _number(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "n/a"


def _plot_agreement(name: str, s: Mapping[str, Any], path: str) -> str:
    from onenet_med.report.plots import _pyplot, _save

    plt = _pyplot()
    p, r = np.asarray(s["predicted_ml"], dtype=np.float64), np.asarray(s["reference_ml"], dtype=np.float64)
    fig, (ba, sc) = plt.subplots(1, 2, figsize=(10, 4.2))
    mean, diff = (p + r) / 2, p - r
    ba.scatter(mean, diff, s=18, color="tab:blue")
    for value, style, label in (
        (s["bias"], "-", f"bias {s['bias']:.2f}"),
        (s["loa_high"], "--", f"+1.96 SD {s['loa_high']:.2f}"),
        (s["loa_low"], "--", f"-1.96 SD {s['loa_low']:.2f}"),
    ):
        if math.isfinite(value):
            ba.axhline(value, color="tab:red", linestyle=style, linewidth=1, label=label)
    ba.set_xlabel("mean of predicted and reference (mL)")
    ba.set_ylabel("predicted - reference (mL)")
    ba.set_title(f"{name}: Bland-Altman (n = {s['n']})")
    ba.legend(fontsize=8, loc="best")
    sc.scatter(r, p, s=18, color="tab:green", zorder=3, label="cases")
    if len(p):
        lo, hi = float(min(p.min(), r.min())), float(max(p.max(), r.max()))
        margin = 0.05 * (hi - lo) or 0.05 * max(abs(hi), 1.0)  # keep the points off the frame
        lo, hi = lo - margin, hi + margin
        sc.plot([lo, hi], [lo, hi], color="grey", linewidth=1, linestyle=":", label="identity")
        sc.set_xlim(lo, hi)
        sc.set_ylim(lo, hi)
        sc.legend(fontsize=8, loc="lower right")
    sc.set_xlabel("reference volume (mL)")
    sc.set_ylabel("predicted volume (mL)")
    sc.set_title(f"{name}: Pearson r {_number(s['pearson'])}, Spearman rho {_number(s['spearman'])}")
    fig.tight_layout()
    return _save(fig, path)


def write_agreement_report(
    out_dir: str | os.PathLike, rows: Sequence[Mapping[str, Any]], class_names: Sequence[str], title: str = ""
) -> dict[str, Any]:
    """``agreement.md`` and one PNG per foreground class (``agreement_<class>.png``: Bland-Altman plot and predicted
    vs reference scatter, with bias, limits of agreement and correlations printed), written atomically.

    Args:
        out_dir: the prediction folder.
        rows: the ``volumes.csv`` rows (as dicts) of the succeeded cases.
        class_names: all class names, background first.
        title: a line under the heading (bundle, labels).

    Returns:
        ``{"report": path, "plots": {class: path}, "statistics": {class: {n, bias, sd, loa_low, loa_high,
        pearson, spearman, mean_dice}}}``.
    """
    from onenet_med.report.summary import markdown_table

    stats = agreement_statistics(rows, class_names)
    plots = {
        name: _plot_agreement(name, s, os.path.join(out_dir, f"agreement_{_slug(name)}.png"))
        for name, s in stats.items()
    }
    header = ["class", "n", "mean Dice", "bias (mL)", "SD (mL)", "LoA low (mL)", "LoA high (mL)", "Pearson r",
              "Spearman rho"]  # fmt: skip
    keys = ["n", "mean_dice", "bias", "sd", "loa_low", "loa_high", "pearson", "spearman"]
    table = markdown_table(header, [[name, *(s[k] for k in keys)] for name, s in stats.items()], digits=3)
    lines = [
        "# Agreement with the reference labels",
        "",
        *([title, ""] if title else []),
        table,
        "Volume difference = predicted - reference (mL). Bias = mean difference; limits of agreement (LoA) = "
        "bias +- 1.96 SD of the differences (SD with n - 1). Pearson r and Spearman rho (Pearson r of the ranks) "
        "of predicted against reference volumes. Dice per case over the whole volume, 2TP / (2TP + FP + FN).",
        "",
        *[f"![{name}]({os.path.basename(path)})" for name, path in plots.items()],
        "",
    ]
    report = os.path.join(out_dir, "agreement.md")
    atomic_write_text(report, "\n".join(lines))
    summary = {
        name: {k: v for k, v in s.items() if k not in ("predicted_ml", "reference_ml")} for name, s in stats.items()
    }
    return {"report": report, "plots": plots, "statistics": summary}
