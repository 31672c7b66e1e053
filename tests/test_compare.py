import json
import os
import shlex
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from ignite.engine import Events

from onenet_med.cli import build_parser, main
from onenet_med.compare import (
    Check,
    ComparedRun,
    CompareSettings,
    bundle_command,
    cli_command,
    compared_runs,
    metric_value,
    network_overrides,
    parse_check,
    parse_run,
    profile_networks_for_report,
    shared_overrides,
)
from onenet_med.data import build_demo_dataset
from onenet_med.networks import get_network
from tests.conftest import REPO_ROOT

BUNDLE = os.path.join(REPO_ROOT, "bundles", "onenet_demo")
NAMES = ["background", "CSF/other brain", "grey matter", "white matter"]
METRICS = {
    "ce": 0.3,
    "dice": 0.9,
    "miou": 0.8,
    "map50": 1.0,
    "volume_dice": 0.91,
    "per_class": {
        "CSF/other brain": {"dice": 0.8, "volume_dice": 0.82},
        "grey matter": {"dice": 0.92, "volume_dice": 0.93},
        "white matter": {"dice": 0.95, "volume_dice": None},
    },
}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return build_demo_dataset(tmp_path_factory.mktemp("demo") / "Task00_MNI152Tissue", step=4)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("onenet_ed4:dice_grey matter>=0.85", Check("onenet_ed4", "dice_grey matter", ">=", 0.85)),
        (" unet4 : ce <= 1e-1 ", Check("unet4", "ce", "<=", 0.1)),
        ("basicunet:volume_dice_CSF/other brain>=.5", Check("basicunet", "volume_dice_CSF/other brain", ">=", 0.5)),
    ],
)
def test_parse_check(text, expected):
    assert parse_check(text) == expected


@pytest.mark.parametrize("text", ["dice>=0.8", "net:dice=0.8", "net:dice>=high"])
def test_parse_check_rejects(text):
    with pytest.raises(ValueError, match="NETWORK:METRIC>=VALUE"):
        parse_check(text)


@pytest.mark.parametrize(
    "key,value",
    [
        ("dice", 0.9),
        ("ce", 0.3),
        ("dice_grey matter", 0.92),
        ("volume_dice_grey matter", 0.93),
        ("volume_dice_white matter", None),  # undefined
        ("dice_no such class", None),
        ("per_class", None),  # not a number
        ("hd95", None),
    ],
)
def test_metric_value(key, value):
    assert metric_value(METRICS, key) == value


@pytest.mark.parametrize(
    "measured,check,passed",
    [
        (0.86, Check("n", "dice", ">=", 0.85), True),
        (0.84, Check("n", "dice", ">=", 0.85), False),
        (0.2, Check("n", "ce", "<=", 0.3), True),
        (None, Check("n", "dice", ">=", 0.0), False),
        (float("nan"), Check("n", "dice", "<=", 1.0), False),
    ],
)
def test_check_passes(measured, check, passed):
    assert check.passes(measured) is passed


@pytest.mark.parametrize(
    "name,width,expected",
    [
        ("onenet_ed4", 16, {"network_name": "onenet_ed4", "network_def#features": 16}),
        ("unet4", 8, {"network_name": "unet4", "network_def#features": 8}),
        ("mobilenet_unet4", 8, {"network_name": "mobilenet_unet4", "network_def#features": 8}),
        ("basicunet", 16, {"network_name": "basicunet", "network_def#features": (16, 16, 32, 64, 128, 16)}),
        ("segresnet", 16, {"network_name": "segresnet", "network_def#init_filters": 16}),
        ("resnet34_unet", 16, {"network_name": "resnet34_unet"}),  # no width setting
        ("onenet_e4", None, {"network_name": "onenet_e4"}),
        ("onenet_ed4_ctx", 8, {"network_name": "onenet_ed4_ctx", "network_def#features": 8}),
    ],
)
def test_network_overrides(name, width, expected):
    over = network_overrides(name, width)
    assert over == expected
    kwargs = {k.split("#")[1]: v for k, v in over.items() if k.startswith("network_def#")}
    net = get_network(name, 1, 4, **kwargs)  # the registry accepts what compare passes
    if width and name != "resnet34_unet":
        first = next(m for m in net.modules() if hasattr(m, "out_channels") and hasattr(m, "kernel_size"))
        assert first.out_channels == width


def test_network_overrides_unknown():
    with pytest.raises(ValueError, match="unknown network 'vnet'"):
        network_overrides("vnet", 16)


def test_bundle_command_reads_back_as_monai_bundle_arguments():
    over = {"max_epochs": 3, "learning_rate": 0.001, "lr_schedule": "cosine", "spatial_size": None, "x": (1, 2)}
    cmd = bundle_command(BUNDLE, ["train.json", "evaluate.json"], over, python="py")
    assert cmd[:5] == ["py", "-m", "monai.bundle", "run", "--config_file"]
    assert json.loads(cmd[5]) == [os.path.join(BUNDLE, "configs", f) for f in ("train.json", "evaluate.json")]
    assert cmd[6:8] == ["--logging_file", os.path.join(BUNDLE, "configs", "logging.conf")]
    pairs = dict(zip(cmd[8::2], cmd[9::2]))
    assert pairs == {
        "--max_epochs": "3",
        "--learning_rate": "0.001",
        "--lr_schedule": "cosine",
        "--spatial_size": "None",
        "--x": "(1, 2)",
    }
    with pytest.raises(FileNotFoundError, match="bundle config not found"):
        bundle_command(REPO_ROOT, ["train.json"], {})


def test_shared_overrides_budget():
    s = CompareSettings(BUNDLE, ["unet4"], "out", epochs=5, batch_size=2, iterations_per_epoch=7, overrides={"seed": 3})
    over = shared_overrides(s)
    assert over["max_epochs"] == 5 and over["batch_size"] == 2 and over["seed"] == 3
    assert over["epoch_length"] == 7 and "drop_last" in " ".join(over)
    # no --dataset-dir: the bundle's default, found from the bundle's folder (each run's bundle_root holds no data)
    assert over["dataset_dir"] == os.path.join(REPO_ROOT, "data", "Task00_MNI152Tissue")
    given = shared_overrides(CompareSettings(BUNDLE, ["unet4"], "out", dataset_dir="elsewhere/data"))["dataset_dir"]
    assert given == os.path.abspath("elsewhere/data")
    with pytest.raises(ValueError, match="iterations_per_epoch"):
        shared_overrides(CompareSettings(BUNDLE, ["unet4"], "out", iterations_per_epoch=0))


def test_iterations_per_epoch_is_what_the_bundle_trains(demo_data, tmp_path):
    """Through MONAI's ConfigParser on the demo bundle: epochs of N iterations of batches of 8 slices."""
    from monai.bundle import ConfigParser

    s = CompareSettings(BUNDLE, ["onenet_ed4"], "out", dataset_dir=str(demo_data), batch_size=8, iterations_per_epoch=3)
    parser = ConfigParser()
    parser.read_config(os.path.join(BUNDLE, "configs", "train.json"))
    parser.read_meta(os.path.join(BUNDLE, "configs", "metadata.json"))
    parser.update({**shared_overrides(s), "num_workers": 0, "data_check": "none", "bundle_root": str(tmp_path)})
    parser.update({"network_def#features": 4, "max_epochs": 2, "val_interval": 100, "progress": False})
    trainer = parser.get_parsed_content("train#trainer")
    sizes = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: sizes.append(len(e.state.batch)))
    trainer.run()
    assert trainer.state.epoch_length == 3 and trainer.state.iteration == 6  # 3 training volumes, 3 steps an epoch
    assert sizes == [8] * 6  # 2 volumes x 4 slices each step


def test_cli_command_round_trips_through_the_parser():
    s = CompareSettings(
        bundle="bundles/onenet_demo",
        networks=["onenet_ed4", "unet4"],
        output_dir="reports/x",
        dataset_dir="data/demo dir",
        width=16,
        epochs=8,
        iterations_per_epoch=20,
        batch_size=2,
        overrides={"learning_rate": 0.001, "lr_schedule": "cosine", "spatial_size": None},
        predict=False,
        threads=1,
        jobs=2,
        checks=[parse_check("onenet_ed4:dice_grey matter>=0.85")],
    )
    line = cli_command(s)
    assert line.startswith("onenet-med compare --bundle bundles/onenet_demo --networks onenet_ed4 unet4")
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert args.networks == s.networks and args.dataset_dir == "data/demo dir" and args.width == 16
    assert dict(args.overrides) == s.overrides and args.no_predict and args.jobs == 2
    assert args.checks == s.checks and args.iterations_per_epoch == 20


@pytest.mark.parametrize(
    "settings,labels",
    [
        (dict(networks=["onenet_ed4", "unet4"], width=16), [("onenet_ed4", "onenet_ed4", 16), ("unet4", "unet4", 16)]),
        (dict(networks=["onenet_ed4", "unet4@8"]), [("onenet_ed4", "onenet_ed4", None), ("unet4@8", "unet4", 8)]),
        # a sweep runs width by width, in the given order; it overrides --width
        (
            dict(networks=["onenet_ed4", "segresnet"], width=4, widths=[16, 8]),
            [("onenet_ed4@16", "onenet_ed4", 16), ("segresnet@16", "segresnet", 16),
             ("onenet_ed4@8", "onenet_ed4", 8), ("segresnet@8", "segresnet", 8)],
        ),
    ],
)  # fmt: skip
def test_compared_runs(settings, labels):
    runs = compared_runs(CompareSettings(bundle="b", output_dir="o", **settings))
    assert [(r.label, r.name, r.width) for r in runs] == labels
    assert all("@" not in r.folder for r in runs)  # run folders are bundle paths


@pytest.mark.parametrize("entry", ["unet4@", "unet4@x", "unet4@0"])
def test_parse_run_rejects(entry):
    with pytest.raises(ValueError, match="NAME@WIDTH"):
        parse_run(entry)


def test_compared_runs_rejects_repeats():
    with pytest.raises(ValueError, match="repeated"):
        compared_runs(CompareSettings(bundle="b", output_dir="o", networks=["unet4@8", "unet4@8"]))


def test_cli_command_round_trips_a_width_sweep():
    s = CompareSettings(bundle="b", networks=["onenet_ed4", "unet4"], output_dir="o", widths=[16, 8, 32])
    s.profile_threads, s.profile_repeats = [2], 15
    args = build_parser().parse_args(shlex.split(cli_command(s))[1:])
    assert args.widths == [16, 8, 32] and args.width is None and args.profile_threads == [2]
    assert args.profile_repeats == 15
    default = build_parser().parse_args(shlex.split(cli_command(CompareSettings("b", ["unet4"], "o")))[1:])
    assert default.widths is None and default.profile_threads == [1, 2] and default.profile_repeats == 5


@pytest.mark.parametrize("threads,keys", [(1, {"1"}), ((1, 2), {"1", "2"})])
def test_profile_for_report_times_the_inference_copy_and_the_plain_network(threads, keys):
    runs = ["onenet_ed4", ComparedRun("basicunet@8", "basicunet", 8)]
    profile = profile_networks_for_report("demo", runs, 4, (1, 32, 24), threads=threads, repeats=2)
    assert set(profile) == {"onenet_ed4", "basicunet@8"}
    plain = get_network("onenet_ed4", 1, 4, features=4)
    row = profile["onenet_ed4"]
    assert row["params"] == sum(p.numel() for p in plain.parameters())
    from onenet_med.profiling import count_flops

    assert row["gflops"] == pytest.approx(count_flops(plain, (1, 1, 32, 24)) / 1e9)  # FLOPs of the plain network
    for r in profile.values():  # one latency per thread count, of the inference copy and of the plain network
        assert set(r["latency_ms"]) == set(r["latency_plain_ms"]) == keys
        assert all(v > 0 for v in [*r["latency_ms"].values(), *r["latency_plain_ms"].values()])
    basic = get_network("basicunet", 1, 4, features=(8, 8, 16, 32, 64, 8))  # width 8: the default widths x 8/32
    assert profile["basicunet@8"]["params"] == sum(p.numel() for p in basic.parameters())


@pytest.mark.slow
def test_compare_end_to_end_on_tiny_demo_data(tmp_path, demo_data, subprocess_env):
    """onenet-med compare through the real bundle: train, evaluate, predict, profile, report; a failed check exits 1."""
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "onenet_med", "compare", "--bundle", BUNDLE, "--networks", "onenet_ed4"]
    cmd += ["--out", str(out), "--dataset-dir", str(demo_data), "--width", "4", "--epochs", "2"]
    cmd += ["--iterations-per-epoch", "2", "--batch-size", "2", "--set", "val_interval=1", "--set", "num_workers=0"]
    cmd += ["--set", "progress=False", "--check", "onenet_ed4:dice>=1.5", "--check", "onenet_ed4:ce>=0"]
    proc = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAIL: onenet_ed4: dice >= 1.5" in proc.stdout and "PASS: onenet_ed4: ce >= 0" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    net = results["networks"]["onenet_ed4"]
    assert results["held_out_cases"] == ["mni_002"] and not results["ok"]
    split = json.loads((out / "datalist.json").read_text())  # the split every run trained and was evaluated on
    assert split["validation"] == ["mni_002"] and split["train"] == results["train_cases"]
    saved = json.loads((out / "runs" / "onenet_ed4" / "output" / "datalist.json").read_text())
    assert (saved["train"], saved["validation"]) == (split["train"], split["validation"])
    assert 0.0 <= net["metrics"]["dice"] <= 1.0 and net["metrics"]["num_cases"] == 1
    assert net["training"]["iterations"] == 4 and net["training"]["epoch_length"] == 2
    assert [e for e, _ in net["curves"]["train_loss"]] == [1, 2]
    assert [e for e, _ in net["curves"]["validation"]["dice"]] == [1, 2]
    assert net["profile"]["params"] == sum(p.numel() for p in get_network("onenet_ed4", 1, 4, features=4).parameters())
    src = nib.load(demo_data / "imagesTr" / "mni_002.nii.gz")
    seg = nib.load(net["prediction"])  # the predicted NIfTI keeps the input's geometry
    assert seg.shape == src.shape and np.allclose(seg.affine, src.affine)
    assert set(np.unique(np.asanyarray(seg.dataobj))) <= {0, 1, 2, 3}
    for png in ("loss_curves", "dice_curves", "class_dice", "overlays"):
        assert (out / f"{png}.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Table 1" in report and "## Table 2" in report and "'--network_def#features' 4" in report
    # --reuse skips every finished step and rewrites the same report
    proc = subprocess.run([*cmd, "--reuse"], env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stdout.count("reusing the finished run") == 3


def test_cli_reports_bad_bundle(tmp_path, capsys):
    code = main(["compare", "--bundle", str(tmp_path), "--networks", "unet4", "--out", str(tmp_path / "o")])
    assert code == 1 and "not a bundle folder" in capsys.readouterr().err
