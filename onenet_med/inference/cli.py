"""``onenet-med predict``: run a trained bundle slice by slice on volumes (NIfTI, .nrrd, .mha, folders of them,
or an MSD dataset.json's test list) and write one label volume per input in the input's exact geometry.

Per input ``<stem>``: ``<stem>_seg.<ext>`` (uint8 labels), ``<stem>_seg.json`` (volume in mL per class, slices,
seconds, uncertainty per case and per slice), optionally ``<stem>_prob.<ext>`` (float32 probabilities, channels
last), ``<stem>_uncertainty.<ext>`` (float32 normalised entropy, --save-uncertainty) and ``<stem>_overlay_*.png``.
For the run: ``summary.json`` and ``volumes.csv`` (one row per case, failed ones with their error: volumes, quality
score ``uncertainty``, its robust z-score in the cohort and a flag); with ``--labels`` also Dice and volume
differences per class in the CSV and ``agreement.md`` with Bland-Altman and scatter plots per class. A failing input
(missing, corrupt, wrong channel count, existing output without ``--overwrite``) is reported and skipped; the exit
code is 1 when any input failed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from typing import Any


def add_parser(subparsers) -> None:
    """Register ``onenet-med predict``."""
    p = subparsers.add_parser(
        "predict",
        help="segment volumes with a trained bundle (slice-wise), writing label maps in the input geometry",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of them, or an MSD dataset.json")
    p.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/onenet_heart")
    p.add_argument(
        "--output", "--out", "-o", required=True, help="output folder (created when missing; --out as for export)"
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="weights: state dict (.pt) or TorchScript (.ts); default <bundle>/models/model.pt, else model.ts",
    )
    p.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="what runs the network: torch (default) or onnxruntime (an exported --model X.onnx, fp32 or int8)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="exported model (onenet-med export): .onnx for --backend onnxruntime (default "
        "<bundle>/models/model.onnx), .ts for torch",
    )
    p.add_argument("--save-probabilities", action="store_true", help="also write <stem>_prob (K channels, float32)")
    p.add_argument("--overlays", type=int, default=0, metavar="N", help="write PNGs of N slices with the prediction")
    p.add_argument(
        "--tta",
        action="store_true",
        help="flip test-time augmentation: mean probabilities of the volume and its in-plane flips (4 passes); "
        "adds the disagreement between passes",
    )
    p.add_argument(
        "--save-uncertainty",
        action="store_true",
        help="also write <stem>_uncertainty (float32 normalised predictive entropy in [0, 1], input geometry)",
    )
    p.add_argument(
        "--labels",
        default=None,
        metavar="DIR|dataset.json",
        help="reference labels: a folder of files named like the images, or an MSD dataset.json with labels; adds "
        "Dice and volume differences to volumes.csv and writes agreement.md (Bland-Altman, scatter per class)",
    )
    p.add_argument(
        "--outlier-z",
        type=float,
        default=None,
        metavar="Z",
        help="flag cases whose quality score's robust z-score in the cohort exceeds Z (default 3.5)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument(
        "--batch-slices",
        type=int,
        default=None,
        metavar="N",
        help="slices per forward pass (default: 1 on CPU, the fastest measured; the bundle's batch_size on GPU)",
    )
    p.add_argument(
        "--axis",
        default="axial",
        help="slicing axis after RAS orientation: axial (default), coronal, sagittal or 0/1/2",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_override_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    speed = p.add_argument_group(
        "speed switches (default: the bundle's settings; each also takes a value: --compile false = --no-compile)"
    )
    speed.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the network's inference copy (BatchNorm folded, oneDNN on CPU; the bundle's default); "
        "--no-optimize: the network as trained",
    )
    speed.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision (float16 on CUDA, bfloat16 on CPU); default: on for CUDA only",
    )
    speed.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last weights and input batches",
    )
    speed.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the network (first volume compiles)",
    )
    p.set_defaults(func=run)


def add_override_option(parser: argparse.ArgumentParser) -> None:
    """``--override KEY=VALUE`` (repeatable), read back by :func:`parse_overrides`."""
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="bundle config override used in training, VALUE parsed as JSON when possible "
        "(e.g. network_def#features=8); repeatable",
    )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a#b=8", "c=x"]`` -> ``{"a#b": 8, "c": "x"}`` (values parsed as JSON, else kept as strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _outputs(path: str, out_dir: str, args: argparse.Namespace) -> dict[str, str]:
    from onenet_med.bundle.inputs import output_name

    outs = {
        "labels": os.path.join(out_dir, output_name(path, "seg")),
        "json": os.path.join(out_dir, output_name(path, "seg", ".json")),
    }
    if args.save_probabilities:
        outs["probabilities"] = os.path.join(out_dir, output_name(path, "prob"))
    if args.save_uncertainty:
        outs["uncertainty"] = os.path.join(out_dir, output_name(path, "uncertainty"))
    return outs


def _overlay_prefix(path: str, out_dir: str) -> str:
    from onenet_med.bundle.inputs import output_name

    return os.path.join(out_dir, output_name(path, "overlay", ""))


def run(args: argparse.Namespace) -> int:
    """Predict every input; returns 0 when all succeeded, 1 when any failed, 2 on a usage/bundle error."""
    from tqdm.auto import tqdm

    from onenet_med.bundle.inputs import expand_inputs
    from onenet_med.engine.atomic import atomic_write_text
    from onenet_med.inference.overlays import save_overlays
    from onenet_med.inference.predictor import Predictor
    from onenet_med.report.cohort import (
        OUTLIER_Z,
        json_safe,
        reference_labels,
        volume_table_columns,
        write_agreement_report,
        write_volume_table,
    )

    start = time.perf_counter()
    try:
        if args.overlays < 0:
            raise ValueError(f"--overlays must be >= 0, got {args.overlays}")
        outlier_z = OUTLIER_Z if args.outlier_z is None else args.outlier_z
        if not outlier_z > 0:
            raise ValueError(f"--outlier-z must be > 0, got {args.outlier_z}")
        labels = reference_labels(args.labels) if args.labels else None
        overrides = parse_overrides(args.override)
        files = expand_inputs(args.inputs)
        if not files:
            raise ValueError(f"no image files in {' '.join(args.inputs)}")
        plans = [(f, _outputs(f, args.output, args)) for f in files]
        seen: dict[str, str] = {}
        for f, outs in plans:
            if outs["labels"] in seen:
                raise ValueError(f"{seen[outs['labels']]} and {f} would both write {outs['labels']}: rename one")
            seen[outs["labels"]] = f
        predictor = Predictor.from_bundle(
            args.bundle,
            checkpoint=args.checkpoint,
            device=args.device,
            backend=args.backend,
            model=args.model,
            overrides=overrides,
            batch_slices=args.batch_slices,
            axis=args.axis,
            progress=not args.no_progress,
            optimize=args.optimize,
            amp=args.amp,
            channels_last=args.channels_last,
            compile=args.compile,
        )
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, ImportError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)

    done: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    bar = tqdm(plans, desc="cases", unit="case", disable=args.no_progress, file=sys.stderr)
    for path, outs in bar:
        bar.set_postfix_str(os.path.basename(path))
        existing = [p for p in outs.values() if os.path.exists(p)]
        if args.overlays:
            existing += sorted(glob.glob(glob.escape(_overlay_prefix(path, args.output)) + "_*.png"))
        if existing and not args.overwrite:
            failed.append({"input": path, "error": f"{path}: output exists: {', '.join(existing)} (pass --overwrite)"})
            tqdm.write(f"SKIPPED {failed[-1]['error']}", file=sys.stderr)
            continue
        try:
            result = predictor.predict_volume(
                path,
                probabilities=args.save_probabilities,
                return_image=args.overlays > 0,
                tta=args.tta,
                uncertainty=True,
            )
            t = time.perf_counter()
            predictor.save(result, outs["labels"], outs.get("probabilities"))
            if args.save_uncertainty:
                predictor.save_map(result, result.uncertainty, outs["uncertainty"])
            if args.overlays:
                outs["overlays"] = save_overlays(
                    result.image,
                    result.labels,
                    result.affine,
                    _overlay_prefix(path, args.output),
                    args.overlays,
                    axis=predictor.axis,
                )
            result.seconds["save"] = time.perf_counter() - t
            result.seconds["total"] += result.seconds["save"]
            record = {
                **result.to_dict(),
                "outputs": outs,
                "bundle": predictor.name,
                "checkpoint": predictor.checkpoint,
                "backend": predictor.backend,
                "device": str(predictor.device),
            }
            if labels is not None:
                record["agreement"] = _agreement(result, labels, args.labels, predictor.spec.class_names)
            atomic_write_text(outs["json"], json.dumps(json_safe(record), indent=2, allow_nan=False) + "\n")
            done.append(record)
        except Exception as error:  # one bad input must not stop the others
            message = str(error) if path in str(error) else f"{path}: {type(error).__name__}: {error}"
            failed.append({"input": path, "error": message})
            tqdm.write(f"FAILED {failed[-1]['error']}", file=sys.stderr)
    bar.close()

    seconds = time.perf_counter() - start
    summary = {
        "bundle": predictor.name,
        "checkpoint": predictor.checkpoint,
        "backend": predictor.backend,
        "device": str(predictor.device),
        "settings": predictor.settings(),
        "inputs": len(plans),
        "succeeded": len(done),
        "failed": failed,
        "seconds": round(seconds, 3),
        "volumes_per_minute": round(60.0 * len(done) / seconds, 3) if seconds > 0 else None,
        "cases": [
            {"input": r["input"], "labels": r["outputs"]["labels"], "slices": r["slices"], "volume_ml": r["volume_ml"]}
            for r in done
        ],
    }
    class_names = list(predictor.spec.class_names)
    rows = _table_rows(plans, done, failed, class_names, outlier_z)
    summary["volumes_csv"] = write_volume_table(
        os.path.join(args.output, "volumes.csv"), rows, volume_table_columns(class_names, labels is not None)
    )
    summary["flagged"] = [r["input"] for r in rows if r["flag"] in ("outlier", "empty")]
    summary["outlier_z"] = outlier_z
    if labels is not None:
        with_reference = [r for r in rows if r["status"] == "ok" and r.get("reference")]
        title = f"{predictor.name} ({predictor.checkpoint}), reference labels {args.labels}"
        report = write_agreement_report(args.output, with_reference, class_names, title=title)
        summary["agreement"] = {"report": report["report"], "statistics": report["statistics"]}
    text = json.dumps(json_safe(summary), indent=2, allow_nan=False)
    atomic_write_text(os.path.join(args.output, "summary.json"), text + "\n")
    _print_summary(summary, class_names)
    return 1 if failed else 0


def _agreement(result, labels: dict[str, str], source: str, class_names) -> dict[str, Any]:
    """Dice and volume differences against the case's reference label, or the reason there is none."""
    from onenet_med.report.cohort import case_agreement, label_for, read_label_map

    path = label_for(labels, result.source)
    if path is None:
        return {"reference": None, "error": f"{result.source}: no reference label in {source}"}
    try:
        reference = read_label_map(path, result.labels.shape, len(class_names))
    except (OSError, ValueError, RuntimeError) as error:
        return {"reference": path, "error": str(error) if path in str(error) else f"{path}: {error}"}
    return {"reference": path, "classes": case_agreement(result.labels, reference, result.voxel_volume_ml, class_names)}


def _case_id(path: str) -> str:
    from onenet_med.bundle.inputs import output_name

    return output_name(path, "", "")[:-1]  # "<stem>_" -> "<stem>"


def _table_rows(plans, done, failed, class_names, outlier_z: float) -> list[dict[str, Any]]:
    """volumes.csv rows in input order: succeeded cases (volumes, score, z, flag), failed ones with their error."""
    from onenet_med.report.cohort import flag_cases

    flags, z = flag_cases([r.get("uncertainty") for r in done], outlier_z)
    by_input: dict[str, dict[str, Any]] = {}
    for record, flag, zi in zip(done, flags, z):
        row = {
            "case": _case_id(record["input"]),
            "input": record["input"],
            "status": "ok",
            "slices": record["slices"],
            "seconds": record["seconds"]["total"],
            **{f"volume_ml_{name}": record["volume_ml"][name] for name in class_names[1:]},
            "augmentations": record.get("augmentations"),
            "uncertainty": record.get("uncertainty"),
            "disagreement": record.get("disagreement"),
            "robust_z": float(zi),
            "flag": flag,
        }
        record["robust_z"], record["flag"] = row["robust_z"], flag
        agreement = record.get("agreement")
        if agreement is not None:
            row["reference"] = agreement["reference"]
            row["agreement_error"] = agreement.get("error")
            for name, values in agreement.get("classes", {}).items():
                row.update({f"{key}_{name}": value for key, value in values.items()})
        by_input[record["input"]] = row
    for failure in failed:
        by_input[failure["input"]] = {
            "case": _case_id(failure["input"]),
            "input": failure["input"],
            "status": "failed",
            "error": failure["error"],
            "flag": "failed",
        }
    return [by_input[path] for path, _ in plans if path in by_input]


def _print_summary(summary: dict[str, Any], class_names) -> None:
    fg = list(class_names[1:])
    header = f"{'case':40s} {'slices':>6s} " + " ".join(f"{name[:18] + ' mL':>21s}" for name in fg)
    print(header)
    for case in summary["cases"]:
        vols = " ".join(f"{case['volume_ml'][name]:21.2f}" for name in fg)
        print(f"{os.path.basename(case['input'])[:40]:40s} {case['slices']:6d} {vols}")
    print(
        f"{summary['succeeded']}/{summary['inputs']} predicted in {summary['seconds']:.1f} s "
        f"({summary['volumes_per_minute'] or 0:.2f} volumes/min) with {summary['bundle']} on {summary['device']} "
        f"({summary['backend']})"
    )
    for failure in summary["failed"]:
        print(f"FAILED {failure['error']}")
