"""Flip TTA and uncertainty on a trained bundle's held-out cases (issue 12's measurement).

For each held-out case of the training run (the split it saved, ``output/datalist.json``, else the bundle's default
split) the case is predicted without and with ``--tta`` (the ``Predictor`` of ``onenet-med predict``), and the script
reports:

- Dice without and with TTA: slice-wise (the package's ``dice``: per class and slice, mean over the slices where the
  class is present, then over classes) and per volume (mean over classes);
- per-slice uncertainty (mean normalised predictive entropy over the slice's predicted foreground, as
  ``<stem>_seg.json`` lists it) against per-slice error (fraction of misclassified voxels among the slice's voxels
  that are foreground in the prediction or the reference): Spearman rho over the slices of all held-out cases (those
  with foreground), with and without TTA; also against the fraction of misclassified voxels of the whole slice.

Example (the demo bundle trained as in docs/benchmarks.md, "int8 accuracy")::

    OMP_NUM_THREADS=2 python scripts/tta_uncertainty.py --bundle bundles/onenet_demo --bundle-root runs/demo_onnx \\
        --dataset-dir data/Task00_MNI152Tissue --json runs/demo_onnx/tta_uncertainty.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch


def slice_dice(predicted: np.ndarray, reference: np.ndarray, axis: int, num_classes: int) -> np.ndarray:
    """(K-1,) Dice per foreground class: per slice along ``axis`` from the confusion counts, mean over the slices
    where the class is present (NaN when never)."""
    from onenet_med.metrics import confusion_counts, dice_from_counts

    p = torch.as_tensor(np.moveaxis(predicted, axis, 0).astype(np.int64))
    r = torch.as_tensor(np.moveaxis(reference, axis, 0))
    dice = dice_from_counts(confusion_counts(p, r, num_classes))[:, 1:]  # (slices, K-1)
    return torch.nanmean(dice, dim=0).numpy()


def slice_errors(predicted: np.ndarray, reference: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per slice along ``axis``: the fraction of misclassified voxels among those that are foreground in the
    prediction or the reference (NaN without any), and the fraction among all the slice's voxels."""
    other = tuple(a for a in range(predicted.ndim) if a != axis)
    wrong = predicted != reference
    union = (predicted > 0) | (reference > 0)
    count = union.sum(axis=other)
    in_union = np.where(count > 0, wrong.sum(axis=other) / np.maximum(count, 1), np.nan)
    return in_union, wrong.mean(axis=other)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from onenet_med.bundle import load_bundle_config, saved_datalists
    from onenet_med.inference import Predictor
    from onenet_med.inference.cli import parse_overrides
    from onenet_med.report.cohort import case_agreement, read_label_map, spearman

    load_start = " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else ""
    overrides = {**parse_overrides(args.override), "bundle_root": os.path.abspath(args.bundle_root)}
    if args.dataset_dir:
        overrides["dataset_dir"] = os.path.abspath(args.dataset_dir)
    checkpoint = None if args.backend == "onnxruntime" else os.path.join(args.bundle_root, "models", "model.pt")
    parser = load_bundle_config(args.bundle, overrides, checkpoint=checkpoint or args.model)
    cases, split_file = saved_datalists(parser, splits=("validation",))
    cases = cases["validation"][: args.max_cases] if args.max_cases else cases["validation"]
    predictor = Predictor.from_bundle(
        args.bundle, checkpoint=checkpoint, overrides=overrides, backend=args.backend, model=args.model, device="cpu"
    )
    names = list(predictor.spec.class_names)
    k = len(names)
    per_case, slices = [], {mode: {"uncertainty": [], "error": [], "error_all": []} for mode in ("plain", "tta")}
    for case in cases:
        entry: dict[str, Any] = {"image": case["image"], "label": case["label"]}
        for mode in ("plain", "tta"):
            start = time.perf_counter()
            result = predictor.predict_volume(case["image"], tta=mode == "tta", uncertainty=True)
            seconds = time.perf_counter() - start
            reference = read_label_map(case["label"], result.labels.shape, k)
            agreement = case_agreement(result.labels, reference, result.voxel_volume_ml, names)
            dice = slice_dice(result.labels, reference, result.slice_axis, k)
            error, error_all = slice_errors(result.labels, reference, result.slice_axis)
            slices[mode]["uncertainty"] += result.slice_uncertainty
            slices[mode]["error"] += error.tolist()
            slices[mode]["error_all"] += error_all.tolist()
            entry[mode] = {
                "dice": float(np.nanmean(dice)),
                "dice_per_class": dict(zip(names[1:], dice.tolist())),
                "volume_dice": float(np.nanmean([a["dice"] for a in agreement.values()])),
                "volume_difference_ml": {name: a["difference_ml"] for name, a in agreement.items()},
                "uncertainty": result.case_uncertainty,
                "disagreement": result.case_disagreement,
                "seconds": round(seconds, 2),
            }
        per_case.append(entry)
    correlations = {}
    for mode, s in slices.items():
        u, e, e_all = (np.asarray(s[key], dtype=np.float64) for key in ("uncertainty", "error", "error_all"))
        correlations[mode] = {
            "slices": len(u),
            "slices_with_foreground": int((np.isfinite(u) & np.isfinite(e)).sum()),
            "spearman": spearman(u, e),  # pairs with a NaN (no foreground) are left out
            "spearman_vs_error_of_whole_slice": spearman(u, e_all),
        }
    dice = {mode: float(np.mean([c[mode]["dice"] for c in per_case])) for mode in ("plain", "tta")}
    volume_dice = {mode: float(np.mean([c[mode]["volume_dice"] for c in per_case])) for mode in ("plain", "tta")}
    return {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "backend": args.backend,
        "split_file": split_file if os.path.isfile(split_file) else None,
        "cases": per_case,
        "dice": dice,
        "volume_dice": volume_dice,
        "tta_dice_minus_plain": dice["tta"] - dice["plain"],
        "slice_uncertainty_vs_error": correlations,
        "threads": torch.get_num_threads(),
        "loadavg_start": load_start,
        "loadavg_end": " ".join(open("/proc/loadavg").read().split()[:3]) if load_start else "",
    }


def print_report(r: dict[str, Any]) -> None:
    print(f"held-out case(s): {', '.join(c['image'] for c in r['cases'])} ({r['backend']})")
    for mode in ("plain", "tta"):
        c = r["slice_uncertainty_vs_error"][mode]
        print(
            f"{mode:5s}: dice {r['dice'][mode]:.4f}, volume dice {r['volume_dice'][mode]:.4f}; Spearman(slice "
            f"uncertainty, slice error) {c['spearman']:.3f} over {c['slices_with_foreground']} slices with foreground "
            f"(of {c['slices']}); against the whole slice's error {c['spearman_vs_error_of_whole_slice']:.3f}"
        )
    ok_dice = r["tta_dice_minus_plain"] >= -0.005
    rho = r["slice_uncertainty_vs_error"]["tta"]["spearman"]
    print(f"TTA dice - plain: {r['tta_dice_minus_plain']:+.4f} (target >= -0.005: {'met' if ok_dice else 'NOT met'})")
    print(f"Spearman with TTA: {rho:.3f} (target >= 0.5: {'met' if rho >= 0.5 else 'NOT met'})")
    print(f"load average {r['loadavg_start']} -> {r['loadavg_end']}, {r['threads']} thread(s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/onenet_demo")
    parser.add_argument("--bundle-root", required=True, help="the training run's folder (models/model.pt, output/)")
    parser.add_argument("--dataset-dir", default=None, help="the dataset (default: the bundle's)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="bundle override")
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    parser.add_argument("--model", default=None, help="exported .onnx for --backend onnxruntime")
    parser.add_argument("--max-cases", type=int, default=None, help="at most this many held-out cases")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    result = measure(args)
    print_report(result)
    if args.json:
        from onenet_med.engine.atomic import atomic_write_text
        from onenet_med.report.cohort import json_safe

        atomic_write_text(args.json, json.dumps(json_safe(result), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
