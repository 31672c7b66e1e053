"""``onenet-med compare``: train and evaluate several registry networks on one bundle's data with the same budget.

For each network the bundle's own configs run as separate ``python -m monai.bundle run`` processes, with one set of
overrides shared by all networks (the budget: epochs, iterations per epoch, batch, lr, schedule, width):

1. ``train.json`` -> ``<out>/runs/<network>/models/model.pt`` (best validation Dice) and TensorBoard curves;
2. ``train.json`` + ``evaluate.json`` -> ``<out>/runs/<network>/output/metrics.json`` on the held-out split;
3. ``onenet-med predict`` on one held-out volume -> ``<out>/predictions/<network>/<case>_seg.nii.gz``
   (slice-wise prediction in the input's geometry, :func:`prediction_command`).

Then the networks are profiled (parameters, FLOPs and latency of one slice at 1 and 2 threads, all networks and
thread counts in the same interleaved rounds, :mod:`onenet_med.profiling`) and ``<out>/report.md`` is written with
the paper's Table 1 layout (CE, mAP0.5, mIoU, DSC), per-class Dice, Table 2 size/speed columns, accuracy against
latency (held-out mean Dice against latency per slice, the Pareto-optimal networks marked,
:mod:`onenet_med.report.frontier`), PNG plots (loss and Dice curves, per-class Dice bars, overlays, the frontier),
the exact commands and the machine. ``<out>/results.json`` holds every number.

``--widths 8 16 32`` trains every network at each width (entries ``onenet_ed4@16``; ``NAME@WIDTH`` in
``--networks`` picks single ones); ``scripts/bench_frontier.sh`` is such a sweep on the demo data.

Example (the demo's budget; ``scripts/demo.sh`` runs exactly this)::

    onenet-med compare --bundle bundles/onenet_demo --networks onenet_ed4 unet4 --out reports/demo \\
        --width 16 --epochs 8 --iterations-per-epoch 25 --batch-size 8 --set learning_rate=0.001 \\
        --set lr_schedule=cosine --set val_interval=2

With a GPU and the real MSD data, leaving out the CPU settings gives the paper's protocol (bundle defaults:
width 64, Adam 1e-4 with the paper's step schedule, 300 epochs); see the bundles' docs/README.md.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onenet_med.data.tasks import TaskSpec

__all__ = [
    "CompareSettings",
    "Check",
    "add_parser",
    "budget_overrides",
    "bundle_command",
    "cli_command",
    "compare",
    "compared_runs",
    "network_overrides",
    "parse_check",
    "prediction_command",
    "profile_networks_for_report",
    "run_logged",
]

#: networks whose constructor takes an int ``features`` (base width): OneNet variants and the U-Net baselines
_FEATURE_PREFIXES = ("onenet_", "unet", "mobilenet_unet", "plainconvunet")
_BASICUNET_DEFAULT = (32, 32, 64, 128, 256, 32)


@dataclass
class CompareSettings:
    """What :func:`compare` runs.

    Args:
        bundle: bundle folder (``bundles/onenet_demo``) holding ``configs/{train,evaluate,inference}.json``.
        networks: registry names (:func:`onenet_med.networks.list_networks`), trained in this order; ``NAME@WIDTH``
            (``onenet_ed4@16``) trains that network at that width whatever ``width`` says.
        output_dir: report folder (``report.md``, plots, ``runs/<network>/``, ``predictions/``, ``logs/``).
        dataset_dir: dataset folder (default: the bundle's ``dataset_dir``).
        width: base width for networks that have one (OneNet, U-Nets: ``features``; BasicUNet: its default
            widths scaled by ``width / 32``; SegResNet: ``init_filters``); ``None`` keeps each network's default
            (64 for OneNet / U-Net, 8 for SegResNet).
        widths: a width sweep: every network of ``networks`` at each of these widths, width by width in this order
            (entries ``NAME@WIDTH`` in the results and the report; overrides ``width``).
        epochs: ``max_epochs`` (None: the bundle's).
        iterations_per_epoch: training iterations per epoch, drawing ``batch_size`` volumes with replacement for
            each (None: one pass over the training cases per epoch, the bundle's default).
        batch_size: training batch in 2D slices (a volume gives 4 slices per draw; None: the task's).
        overrides: more ``id=value`` bundle overrides, the same for every network (values are Python literals or
            strings, e.g. ``learning_rate=0.001``, ``lr_schedule=cosine``, ``spatial_size=None``).
        predict: run slice-wise prediction of every network on one held-out volume.
        predict_input: the volume to predict (default: the first held-out case's image).
        reuse: skip a step whose exact command already finished in ``output_dir`` (re-plot, add a network).
        threads: ``OMP_NUM_THREADS`` of the child processes (None: inherit).
        jobs: networks trained side by side (each its own process; on a CPU give each ``threads`` = cores / jobs:
            one thread per process avoids the collapse of several OpenMP threads competing for busy cores).
        checks: ``Check`` s evaluated into the report; any failure makes :func:`compare` report ``ok=False``.
        profile: measure parameters, FLOPs and latency.
        profile_threads: thread counts of the latency profile, timed in the same interleaved rounds.
        profile_repeats: timed rounds of the latency profile (the median is reported).
        setup_commands: commands that prepared the data (e.g. ``onenet-med data demo ...``), listed in the report.
    """

    bundle: str
    networks: list[str]
    output_dir: str
    dataset_dir: str | None = None
    width: int | None = None
    widths: list[int] | None = None
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    batch_size: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    predict: bool = True
    predict_input: str | None = None
    reuse: bool = False
    threads: int | None = None
    jobs: int = 1
    checks: list[Check] = field(default_factory=list)
    profile: bool = True
    profile_threads: list[int] = field(default_factory=lambda: [1, 2])
    profile_repeats: int = 5
    setup_commands: list[str] = field(default_factory=list)


@dataclass
class Check:
    """A pass/fail requirement on a network's ``metrics.json``: ``network:metric>=value`` (or ``<=``).

    ``metric`` is a top-level key (``dice``, ``volume_dice``, ``miou``, ``map50``, ``ce``) or a per-class one
    ``<metric>_<class name>`` (``dice_grey matter``, ``volume_dice_white matter``).
    """

    network: str
    metric: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.network}: {self.metric} {self.op} {self.value:g}"

    def evaluate(self, metrics: Mapping[str, Any]) -> float | None:
        """The measured value (None when the metric is missing or undefined)."""
        return metric_value(metrics, self.metric)

    def passes(self, measured: float | None) -> bool:
        if measured is None or not math.isfinite(measured):
            return False
        return measured >= self.value if self.op == ">=" else measured <= self.value


def parse_check(text: str) -> Check:
    """``"onenet_ed4:dice_grey matter>=0.85"`` -> :class:`Check`."""
    m = re.fullmatch(r"\s*([^:]+?)\s*:\s*(.+?)\s*(>=|<=)\s*([-+0-9.eE]+)\s*", text)
    if not m:
        raise ValueError(f"check {text!r}: expected NETWORK:METRIC>=VALUE or NETWORK:METRIC<=VALUE")
    return Check(m.group(1), m.group(2), m.group(3), float(m.group(4)))


def metric_value(metrics: Mapping[str, Any], key: str) -> float | None:
    """A value of a ``metrics.json`` document: top-level ``key`` or ``<metric>_<class>`` from ``per_class``."""
    if key in metrics and not isinstance(metrics[key], (dict, list)):
        return None if metrics[key] is None else float(metrics[key])
    for metric in ("volume_dice", "dice", "iou", "ap50"):  # longest prefix first: volume_dice_ before dice_
        prefix = metric + "_"
        if key.startswith(prefix):
            value = metrics.get("per_class", {}).get(key[len(prefix) :], {}).get(metric)
            return None if value is None else float(value)
    return None


def network_overrides(name: str, width: int | None) -> dict[str, Any]:
    """Bundle overrides that select network ``name`` at base width ``width`` (None: the network's default).

    OneNet, the U-Nets and nnU-Net's PlainConvUNet take ``features`` (base width); BasicUNet gets its default
    widths (32, 32, 64, 128, 256, 32) scaled by ``width / 32``; SegResNet takes ``init_filters`` (its first stage's
    width, default 8); the ResNet U-Nets have no width setting and keep their size.
    """
    from onenet_med.networks import list_networks

    if name not in list_networks():
        raise ValueError(f"unknown network {name!r}; choose from: {', '.join(list_networks())}")
    out: dict[str, Any] = {"network_name": name}
    if width is None:
        return out
    if name.startswith(_FEATURE_PREFIXES):
        out["network_def#features"] = int(width)
    elif name == "basicunet":
        out["network_def#features"] = tuple(max(1, round(f * width / 32)) for f in _BASICUNET_DEFAULT)
    elif name == "segresnet":
        out["network_def#init_filters"] = int(width)
    return out


@dataclass(frozen=True)
class ComparedRun:
    """One trained network of a comparison: ``label`` (its key in the results and the report), registry ``name``,
    ``width`` (None: the network's default)."""

    label: str
    name: str
    width: int | None

    @property
    def folder(self) -> str:
        """The label as a folder / file name (``onenet_ed4@16`` -> ``onenet_ed4_w16``: no ``@`` in bundle paths)."""
        return self.label.replace("@", "_w")


def parse_run(entry: str, width: int | None = None) -> ComparedRun:
    """``"onenet_ed4"`` (at ``width``) or ``"onenet_ed4@16"`` -> :class:`ComparedRun`."""
    name, sep, w = entry.partition("@")
    if not sep:
        return ComparedRun(entry, entry, width)
    if not w.isdigit() or int(w) < 1:
        raise ValueError(f"network {entry!r}: expected NAME@WIDTH with a positive integer width")
    return ComparedRun(entry, name, int(w))


def compared_runs(settings: CompareSettings) -> list[ComparedRun]:
    """The trainings of ``settings`` in order: each network at ``width``, or width by width over ``widths``."""
    if settings.widths:
        runs = [parse_run(f"{n}@{w}") for w in settings.widths for n in settings.networks]
    else:
        runs = [parse_run(n, settings.width) for n in settings.networks]
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"networks repeated in the comparison: {labels}")
    return runs


def _cli_value(value: Any) -> str:
    """A value as ``monai.bundle``'s command line (python-fire) reads it back: strings as they are, lists of strings
    as JSON (readable when quoted for a shell), anything else as its Python literal."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return json.dumps(value)
    return repr(value)


def bundle_command(
    bundle: str | os.PathLike, configs: Sequence[str], overrides: Mapping[str, Any], python: str | None = None
) -> list[str]:
    """``python -m monai.bundle run`` over ``configs`` of ``bundle`` (overlays after ``train.json``) + overrides."""
    config_dir = Path(bundle) / "configs"
    files = [str(config_dir / c) for c in configs]
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: bundle config not found (is {os.fspath(bundle)!r} a bundle folder?)")
    cmd = [python or sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(files)]
    logging_conf = config_dir / "logging.conf"
    if logging_conf.is_file():
        cmd += ["--logging_file", str(logging_conf)]
    for key, value in overrides.items():
        cmd += [f"--{key}", _cli_value(value)]
    return cmd


def prediction_command(
    bundle: str | os.PathLike,
    overrides: Mapping[str, Any],
    inputs: Sequence[str],
    output_dir: str | os.PathLike,
    python: str | None = None,
) -> list[str]:
    """``onenet-med predict`` of ``inputs`` with the bundle trained under ``overrides`` (its ``bundle_root``'s
    ``models/model.pt``) into ``output_dir``: one ``<case>_seg.nii.gz`` per input, in the input's geometry.

    No overrides are repeated: the task, network and sizes the model was trained with are saved beside it
    (``models/task.json``)."""
    root = Path(overrides.get("bundle_root", bundle))
    cmd = [python or sys.executable, "-m", "onenet_med", "predict", "--bundle", os.fspath(bundle)]
    cmd += ["--checkpoint", str(root / "models" / "model.pt"), "--output", os.fspath(output_dir)]
    cmd += ["--overwrite", "--no-progress"]
    return cmd + [os.fspath(p) for p in inputs]


class Console:
    """Shares one terminal between processes running side by side: one of them at a time is shown.

    When the shown job ends, the next still-running one takes over (its earlier output stays in its log only).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: list[str] = []

    def start(self, tag: str) -> None:
        with self._lock:
            self._active.append(tag)

    def shows(self, tag: str) -> bool:
        with self._lock:
            return bool(self._active) and self._active[0] == tag

    def end(self, tag: str) -> None:
        with self._lock:
            was_shown = bool(self._active) and self._active[0] == tag
            self._active.remove(tag)
            nxt = self._active[0] if self._active else None
        if was_shown and nxt:
            print(f"\n[compare] now showing {nxt} (running since it started; full output in its log)", flush=True)


def run_logged(
    cmd: Sequence[str],
    log_path: str | os.PathLike,
    env: Mapping[str, str] | None = None,
    console: Console | None = None,
    tag: str = "",
) -> float:
    """Run ``cmd``, streaming its output (progress bars included) to ``log_path`` and to this terminal.

    Args:
        cmd: the command.
        log_path: file receiving everything the command prints (stdout and stderr), after a ``$ command`` line.
        env: environment of the command (default: this process's).
        console: when given, the output reaches the terminal only while ``console`` shows ``tag``.
        tag: this job's name for ``console``.

    Returns:
        wall time in seconds.

    Raises:
        RuntimeError: non-zero exit, with the command and the log's last lines.
    """
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    start = time.perf_counter()
    if console is not None:
        console.start(tag)
    try:
        with open(log_path, "wb") as log:
            log.write(("$ " + shlex.join(cmd) + "\n").encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(env or os.environ))
            assert proc.stdout is not None
            out = getattr(sys.stdout, "buffer", None)
            while chunk := proc.stdout.read1(65536):
                log.write(chunk)
                if console is not None and not console.shows(tag):
                    continue
                if out is not None:
                    out.write(chunk)
                    out.flush()
                else:  # e.g. a notebook's stdout
                    sys.stdout.write(chunk.decode(errors="replace"))
            code = proc.wait()
    finally:
        if console is not None:
            console.end(tag)
    seconds = time.perf_counter() - start
    if code != 0:
        with open(log_path, errors="replace") as f:
            tail = "".join(f.readlines()[-25:])
        raise RuntimeError(f"command failed (exit {code}); log {log_path}:\n$ {shlex.join(cmd)}\n...\n{tail}")
    return seconds


def _bundle_defaults(bundle: str | os.PathLike) -> dict[str, Any]:
    """Task, val_fraction and seed as the bundle's train.json + metadata.json define them (literal values only)."""
    from onenet_med.bundle.workflow import bundle_task

    config_dir = Path(bundle) / "configs"
    with open(config_dir / "metadata.json") as f:
        meta = json.load(f)
    with open(config_dir / "train.json") as f:
        train = json.load(f)
    return {
        "task": bundle_task(meta["name"]),
        "val_fraction": train.get("val_fraction", 0.2),
        "seed": train.get("seed", 0),
        "name": meta["name"],
    }


def compared_dataset_dir(settings: CompareSettings) -> str:
    """The dataset folder of every run of the comparison: ``--dataset-dir``, else the bundle's default found from the
    bundle's own folder (each run trains with its own ``bundle_root``, a run folder holding no data)."""
    from onenet_med.bundle.workflow import default_dataset_dir

    if settings.dataset_dir is not None:
        return os.path.abspath(settings.dataset_dir)
    task = settings.overrides.get("task", _bundle_defaults(settings.bundle)["task"])
    return os.path.abspath(default_dataset_dir(task, Path(settings.bundle).resolve()))


def held_out_items(
    settings: CompareSettings, save_split: str | os.PathLike | None = None
) -> tuple[TaskSpec, list[dict], list[dict]]:
    """(task, training items, held-out items) of the bundle's data under the compare overrides, split as the bundle's
    training splits it (or by the ``split_file`` override); with ``save_split`` the split is written there
    (``datalist.json``), for every network to train and be evaluated on exactly these cases."""
    from onenet_med.bundle.workflow import prepare_datalists, resolve_task

    d = _bundle_defaults(settings.bundle)
    task = settings.overrides.get("task", d["task"])
    dataset_dir = compared_dataset_dir(settings)
    spec = resolve_task(task, dataset_dir)
    lists = prepare_datalists(
        spec,
        dataset_dir,
        val_fraction=float(settings.overrides.get("val_fraction", d["val_fraction"])),
        seed=int(settings.overrides.get("seed", d["seed"])),
        check="none",
        split_file=settings.overrides.get("split_file"),
        save_split=save_split,
    )
    return spec, lists["train"], lists["validation"]


def budget_overrides(
    epochs: int | None = None, iterations_per_epoch: int | None = None, batch_size: int | None = None
) -> dict[str, Any]:
    """Bundle overrides of a training budget (what ``--epochs``, ``--iterations-per-epoch``, ``--batch-size`` set).

    Args:
        epochs: ``max_epochs``.
        iterations_per_epoch: iterations per epoch (the bundle's ``epoch_length``; Ignite restarts the shuffled
            training loader when it runs out) instead of one pass over the training cases. With few volumes (the demo
            has 3) an epoch is otherwise a single short iteration, and the progress bar, the per-epoch lr schedule
            and the validation interval lose their meaning.
        batch_size: training batch in 2D slices (a volume gives ``slices_per_volume`` = 4 slices per draw).
    """
    over: dict[str, Any] = {}
    if epochs is not None:
        over["max_epochs"] = int(epochs)
    if batch_size is not None:
        over["batch_size"] = int(batch_size)
    if iterations_per_epoch is not None:
        n = int(iterations_per_epoch)
        if n < 1:
            raise ValueError(f"iterations_per_epoch must be >= 1, got {n}")
        over["epoch_length"] = n
        # every step a full batch: the short remainder of a pass is dropped (the loader reshuffles each restart)
        over["drop_last"] = "$len(@train#dataset) > @train#dataloader#batch_size"
    return over


def shared_overrides(settings: CompareSettings) -> dict[str, Any]:
    """The overrides every network gets (data and budget), before the per-network ones."""
    over: dict[str, Any] = {"dataset_dir": compared_dataset_dir(settings)}
    over.update(budget_overrides(settings.epochs, settings.iterations_per_epoch, settings.batch_size))
    over.update(settings.overrides)
    return over


def _load_steps(path: Path) -> dict[str, Any]:
    if path.is_file():
        with open(path) as f:
            return json.load(f)
    return {}


def _finite(value: Any) -> Any:
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _write_json(path: str | os.PathLike, data: Any) -> None:
    from onenet_med.engine.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(_finite(data), indent=2, default=str, allow_nan=False) + "\n")


def profile_networks_for_report(
    task: str | TaskSpec,
    runs: Sequence[ComparedRun | str],
    width: int | None,
    slice_shape: Sequence[int],
    threads: int | Sequence[int] = (1, 2),
    repeats: int = 5,
) -> dict[str, dict[str, Any]]:
    """Parameters, FLOPs and latency of one ``slice_shape`` (C, H, W) slice for each network as trained.

    FLOPs are those of the plain network; ``latency_ms`` is that of the inference copy that prediction uses
    (:func:`onenet_med.networks.optimize_for_inference`), ``latency_plain_ms`` that of the plain network in eval
    mode, each a ``{threads: median ms}`` mapping (keys are strings, as in JSON). All networks and all thread counts
    are timed in the same interleaved rounds (:func:`onenet_med.profiling.measure_latency` once per round and
    thread count), so that a change of load slows every column alike.

    Args:
        task: the task (channels and classes of the networks).
        runs: :class:`ComparedRun` s or ``NAME`` / ``NAME@WIDTH`` entries (``width`` applies to a bare name).
        width: the width of bare names (None: each network's default).
        slice_shape: (C, H, W) of one slice.
        threads: thread counts (or one).
        repeats: timed rounds (the median is reported).

    Returns:
        label -> ``{"params", "param_mb", "gflops", "latency_ms", "latency_plain_ms"}``.
    """
    import statistics

    from onenet_med import profiling
    from onenet_med.data import get_task
    from onenet_med.networks import get_network, optimize_for_inference

    spec = get_task(task)
    nets = {}
    for run in runs:
        run = parse_run(run, width) if isinstance(run, str) else run
        overrides = network_overrides(run.name, run.width)
        kwargs = {k.split("#", 1)[1]: v for k, v in overrides.items() if k.startswith("network_def#")}
        nets[run.label] = get_network(run.name, spec.in_channels, spec.num_classes, **kwargs).eval()
    shape = (1, *slice_shape)
    timed = {label: optimize_for_inference(net) for label, net in nets.items()}
    timed.update({f"{label} (plain)": net for label, net in nets.items()})
    keys = [str(int(t)) for t in ([threads] if isinstance(threads, int) else threads)]
    times: dict[str, dict[str, list[float]]] = {k: {name: [] for name in timed} for k in keys}
    for k in keys:  # warm-up at every thread count (oneDNN primitives are made per thread count)
        profiling.measure_latency(timed, shape=shape, repeats=1, warmup=1, threads=int(k))
    for _ in range(repeats):
        for k in keys:
            for name, t in profiling.measure_latency(timed, shape=shape, repeats=1, warmup=0, threads=int(k)).items():
                times[k][name] += t
    out: dict[str, dict[str, Any]] = {}
    for label, net in nets.items():
        out[label] = {
            "params": profiling.count_parameters(net),
            "param_mb": profiling.parameter_bytes(net) / 1e6,
            "gflops": profiling.count_flops(net, shape) / 1e9,
            "latency_ms": {k: 1000 * statistics.median(times[k][label]) for k in keys},
            "latency_plain_ms": {k: 1000 * statistics.median(times[k][f"{label} (plain)"]) for k in keys},
        }
    return out


def _slice_shape(task: str | TaskSpec, item: Mapping[str, Any]) -> tuple[int, ...]:
    """(C, H, W) of one preprocessed slice of ``item`` (what the network sees)."""
    from onenet_med.data import get_transforms

    image = get_transforms(task, "infer")({"image": item["image"]})["image"]
    return tuple(int(s) for s in image.shape[:3])


def compare(settings: CompareSettings) -> dict[str, Any]:
    """Train, evaluate, predict, profile and report every network of ``settings`` (see the module docstring).

    Returns:
        the ``results.json`` document (also written to ``<output_dir>/results.json``); ``results["ok"]`` is False
        when a check failed.
    """
    from onenet_med.report.compare import write_report
    from onenet_med.report.frontier import frontier_rows
    from onenet_med.report.summary import machine_info

    if not settings.networks:
        raise ValueError("no networks to compare")
    runs = compared_runs(settings)
    out = Path(settings.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    bundle = Path(settings.bundle).resolve()
    if not (bundle / "configs" / "train.json").is_file():
        raise FileNotFoundError(f"{bundle}: not a bundle folder (no configs/train.json)")
    split_file = out / "datalist.json"
    spec, train_items, held_out = held_out_items(settings, save_split=split_file)
    task = spec.name
    if not held_out:
        raise ValueError(f"{task}: no held-out cases (val_fraction 0?); compare evaluates on the validation split")
    env = dict(os.environ)
    if settings.threads:
        env["OMP_NUM_THREADS"] = str(settings.threads)
    common = {**shared_overrides(settings), "split_file": str(split_file)}  # every run: the cases above
    predict_input = os.path.abspath(settings.predict_input or held_out[0]["image"])
    machine = machine_info()
    steps_path = out / "steps.json"
    steps = _load_steps(steps_path) if settings.reuse else {}
    results: dict[str, Any] = {
        "bundle": str(bundle),
        "task": task,
        "class_names": list(spec.class_names),
        "dataset_dir": settings.dataset_dir,
        "train_cases": [i.get("case_id", i["image"]) for i in train_items],
        "held_out_cases": [i.get("case_id", i["image"]) for i in held_out],
        "settings": {**asdict(settings), "checks": [str(c) for c in settings.checks]},
        "shared_overrides": common,
        "command": cli_command(settings),
        "setup_commands": list(settings.setup_commands),
        "machine": machine,
        "networks": {},
    }
    started = time.perf_counter()
    lock = threading.Lock()
    console = Console()

    def pipeline(run: ComparedRun) -> dict[str, Any]:
        run_dir = out / "runs" / run.folder
        over = {**common, **network_overrides(run.name, run.width), "bundle_root": str(run_dir)}
        commands = {
            "train": bundle_command(bundle, ["train.json"], over),
            "evaluate": bundle_command(bundle, ["train.json", "evaluate.json"], over),
        }
        pred_dir = out / "predictions" / run.folder
        if settings.predict:
            commands["predict"] = prediction_command(bundle, over, [predict_input], pred_dir)
        seconds: dict[str, float] = {}
        for step, cmd in commands.items():
            key = f"{run.label}/{step}"
            previous = steps.get(key)
            if previous and previous["command"] == cmd:
                print(f"[compare] {key}: reusing the finished run ({previous['seconds']:.0f} s)", flush=True)
                seconds[step] = previous["seconds"]
                continue
            log = out / "logs" / f"{run.folder}_{step}.log"
            print(f"[compare] {key}: {shlex.join(cmd)}\n[compare] log: {log}", flush=True)
            for folder in {"train": [run_dir], "predict": [pred_dir]}.get(step, []):
                shutil.rmtree(folder, ignore_errors=True)  # a fresh run must not mix with an earlier one's files
            seconds[step] = run_logged(cmd, log, env, console, key)
            print(f"[compare] {key}: done in {seconds[step]:.0f} s", flush=True)
            with lock:
                steps[key] = {"command": cmd, "seconds": seconds[step]}
                _write_json(steps_path, steps)
        entry = _network_results(run_dir, pred_dir if settings.predict else None, over, commands, seconds)
        return {"network": run.name, "width": run.width, **entry}

    jobs = max(1, min(int(settings.jobs), len(runs)))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {run.label: pool.submit(pipeline, run) for run in runs}
        for label, future in futures.items():
            results["networks"][label] = future.result()
    results["total_seconds"] = time.perf_counter() - started
    if hasattr(os, "getloadavg"):  # a busy machine explains slow timings
        results["machine"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    if settings.profile:
        slice_shape = _slice_shape(spec, held_out[0])
        results["profile_input"] = [1, *slice_shape]
        results["profile_threads"] = [int(t) for t in settings.profile_threads]
        results["profile_repeats"] = int(settings.profile_repeats)
        profiles = profile_networks_for_report(
            spec, runs, None, slice_shape, settings.profile_threads, repeats=settings.profile_repeats
        )
        for name, prof in profiles.items():
            results["networks"][name]["profile"] = prof
    results["checks"] = []
    for check in settings.checks:
        metrics = results["networks"].get(check.network, {}).get("metrics", {})
        measured = check.evaluate(metrics)
        results["checks"].append({"check": str(check), "measured": measured, "passed": check.passes(measured)})
    results["ok"] = all(c["passed"] for c in results["checks"])
    results["frontier"] = frontier_rows(results)
    results["files"] = write_report(results, out, predict_input=predict_input, held_out=held_out)
    _write_json(out / "results.json", results)
    return results


def _network_results(
    run_dir: Path,
    pred_dir: Path | None,
    overrides: Mapping[str, Any],
    commands: Mapping[str, Sequence[str]],
    seconds: Mapping[str, float],
) -> dict[str, Any]:
    """One network's entry of ``results.json``: metrics, curves, training speed, prediction path."""
    from onenet_med.report.curves import read_run_curves

    with open(run_dir / "output" / "metrics.json") as f:
        metrics = json.load(f)
    curves = read_run_curves(run_dir / "output", ckpt_dir=run_dir / "models")
    best = curves.best("val_mean_dice") or curves.best("dice")
    entry: dict[str, Any] = {
        "overrides": dict(overrides),
        "commands": {k: shlex.join(v) for k, v in commands.items()},
        "seconds": dict(seconds),
        "metrics": metrics,
        "training": {
            "epochs": curves.train_loss[-1][0] if curves.train_loss else 0,
            "epoch_length": curves.epoch_length,
            "iterations": curves.iterations,
            "s_per_iteration": curves.seconds_per_iteration,
            "best_epoch": best[0] if best else None,
            "best_val_dice": best[1] if best else None,
        },
        "curves": {"train_loss": curves.train_loss, "validation": curves.validation},
    }
    if pred_dir is not None:
        found = sorted(pred_dir.glob("*_seg.nii.gz"))
        entry["prediction"] = str(found[-1]) if found else None
    return entry


def _parse_set(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected ID=VALUE")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def add_parser(subparsers) -> None:
    """Register ``onenet-med compare``."""
    p = subparsers.add_parser(
        "compare",
        help="train and evaluate several networks on one bundle's data with the same budget; write a report",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/onenet_demo")
    p.add_argument(
        "--networks", nargs="+", required=True,
        help="registry names, e.g. onenet_ed4 unet4; NAME@WIDTH trains NAME at WIDTH (onenet_ed4@16)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="report folder (report.md, plots, runs/, predictions/, logs/)")
    p.add_argument("--dataset-dir", default=None, help="dataset folder (default: the bundle's dataset_dir)")
    p.add_argument(
        "--width",
        type=int,
        default=None,
        help="base width of OneNet / U-Nets (default: 64), SegResNet's init_filters (default: 8)",
    )
    p.add_argument(
        "--widths", type=int, nargs="+", default=None, metavar="W",
        help="width sweep: every network at each width, width by width (results as NAME@WIDTH; overrides --width)",
    )  # fmt: skip
    p.add_argument("--epochs", type=int, default=None, help="max_epochs (default: the bundle's)")
    p.add_argument("--iterations-per-epoch", type=int, default=None, help="training iterations per epoch")
    p.add_argument("--batch-size", type=int, default=None, help="training batch in 2D slices")
    p.add_argument(
        "--set", dest="overrides", action="append", type=_parse_set, default=[], metavar="ID=VALUE",
        help="bundle override for every network, e.g. --set learning_rate=0.001 (repeatable)",
    )  # fmt: skip
    p.add_argument("--no-predict", action="store_true", help="skip the slice-wise prediction of a held-out volume")
    p.add_argument("--predict-input", default=None, help="volume to predict (default: the first held-out case)")
    p.add_argument("--reuse", action="store_true", help="skip steps whose exact command already finished here")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the training processes")
    p.add_argument("--jobs", type=int, default=1, help="networks trained side by side (default 1)")
    p.add_argument(
        "--check", dest="checks", action="append", type=parse_check, default=[], metavar="NET:METRIC>=VALUE",
        help="requirement written into the report; exit 1 when one fails (repeatable)",
    )  # fmt: skip
    p.add_argument("--no-profile", action="store_true", help="skip the parameters / FLOPs / latency profile")
    p.add_argument(
        "--profile-threads", type=int, nargs="+", default=[1, 2], metavar="T",
        help="thread counts of the latency profile, timed in the same interleaved rounds (default: 1 2)",
    )  # fmt: skip
    p.add_argument("--profile-repeats", type=int, default=5, help="timed rounds of the latency profile (default 5)")
    p.add_argument(
        "--setup-command", dest="setup_commands", action="append", default=[], metavar="CMD",
        help="a command that prepared the data, listed in the report (repeatable)",
    )  # fmt: skip
    p.set_defaults(func=_run)


def cli_command(settings: CompareSettings) -> str:
    """The ``onenet-med compare`` command line equivalent to ``settings`` (for reports)."""
    args = ["onenet-med", "compare", "--bundle", settings.bundle, "--networks", *settings.networks]
    args += ["--out", settings.output_dir]
    for flag, value in (
        ("--dataset-dir", settings.dataset_dir),
        ("--width", settings.width),
        ("--epochs", settings.epochs),
        ("--iterations-per-epoch", settings.iterations_per_epoch),
        ("--batch-size", settings.batch_size),
        ("--predict-input", settings.predict_input),
        ("--threads", settings.threads),
        ("--jobs", settings.jobs if settings.jobs != 1 else None),
    ):
        if value is not None:
            args += [flag, str(value)]
    if settings.widths:
        args += ["--widths", *map(str, settings.widths)]
    for key, value in settings.overrides.items():
        args += ["--set", f"{key}={_cli_value(value)}"]
    for flag, on in (("--no-predict", not settings.predict), ("--reuse", settings.reuse)):
        if on:
            args.append(flag)
    args += [
        x for check in settings.checks for x in ("--check", f"{check.network}:{check.metric}{check.op}{check.value:g}")
    ]
    if not settings.profile:
        args.append("--no-profile")
    else:
        if list(settings.profile_threads) != [1, 2]:
            args += ["--profile-threads", *map(str, settings.profile_threads)]
        if settings.profile_repeats != 5:
            args += ["--profile-repeats", str(settings.profile_repeats)]
    return shlex.join(args)


def _run(args: argparse.Namespace) -> int:
    settings = CompareSettings(
        bundle=args.bundle,
        networks=list(args.networks),
        output_dir=args.out,
        dataset_dir=args.dataset_dir,
        width=args.width,
        widths=list(args.widths) if args.widths else None,
        epochs=args.epochs,
        iterations_per_epoch=args.iterations_per_epoch,
        batch_size=args.batch_size,
        overrides=dict(args.overrides),
        predict=not args.no_predict,
        predict_input=args.predict_input,
        reuse=args.reuse,
        threads=args.threads,
        jobs=args.jobs,
        checks=list(args.checks),
        profile=not args.no_profile,
        profile_threads=list(args.profile_threads),
        profile_repeats=args.profile_repeats,
        setup_commands=list(args.setup_commands),
    )
    try:
        results = compare(settings)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    print(summary_text(results))
    return 0 if results["ok"] else 1


def summary_text(results: Mapping[str, Any]) -> str:
    """A few lines for the terminal: per-class Dice of each network, the checks, where the report is."""
    fg = results["class_names"][1:]
    lines = ["", f"Held-out Dice on {results['task']} (per slice | per 3D case):"]
    for name, e in results["networks"].items():
        m = e["metrics"]
        cells = []
        for c in [*fg, None]:
            s = metric_value(m, f"dice_{c}" if c else "dice")
            v = metric_value(m, f"volume_dice_{c}" if c else "volume_dice")
            text = "–" if s is None else f"{s:.3f}"
            cells.append(f"{c or 'mean'} {text}" + (f" | {v:.3f}" if v is not None else ""))
        lines.append(f"  {name}: " + ", ".join(cells) + f"  (train {e['seconds'].get('train', 0):.0f} s)")
    for c in results.get("checks", []):
        lines.append(f"  {'PASS' if c['passed'] else 'FAIL'}: {c['check']}")
    lines.append(f"Report: {results['files']['report']}")
    return "\n".join(lines)
