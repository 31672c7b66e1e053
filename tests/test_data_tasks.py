import subprocess
import sys

import pytest

from onenet_med.data import IGNORE_INDEX, TaskSpec, get_task, list_tasks

EXPECTED = [  # name, kind, in_channels, num_classes, modality, msd_task
    ("heart", "msd", 1, 2, "mri", "Task02_Heart"),
    ("brain", "msd", 4, 4, "mri", "Task01_BrainTumour"),
    ("lung", "msd", 1, 2, "ct", "Task06_Lung"),
    ("voc", "voc", 3, 21, "rgb", None),
    ("pets", "pets", 3, 3, "rgb", None),
    ("petf", "pets", 3, 38, "rgb", None),
    ("demo", "demo", 1, 4, "mri", "Task00_MNI152Tissue"),
    ("msd", "msd", 1, 2, "mri", None),  # generic: placeholders until a dataset.json or a trained model says more
]


def test_registry_names():
    assert list_tasks() == ["heart", "brain", "lung", "demo", "msd", "voc", "pets", "petf"]
    assert IGNORE_INDEX == 255


@pytest.mark.parametrize("name,kind,in_ch,n_cls,modality,msd_task", EXPECTED)
def test_task_specs(name, kind, in_ch, n_cls, modality, msd_task):
    spec = get_task(name)
    assert (spec.kind, spec.in_channels, spec.num_classes, spec.modality, spec.msd_task) == (
        kind,
        in_ch,
        n_cls,
        modality,
        msd_task,
    )
    assert len(spec.class_names) == n_cls and spec.class_names[0] == "background"
    assert get_task(name.upper()) is spec and get_task(spec) is spec
    assert spec.cache in ("memory", "disk")


def test_task_details():
    assert get_task("brain").channel_names == ("FLAIR", "T1w", "T1gd", "T2w")
    assert get_task("voc").ignore_index == IGNORE_INDEX
    assert get_task("pets").ignore_index is None
    assert get_task("petf").class_names[1] == "Abyssinian" and get_task("petf").class_names[37] == "yorkshire_terrier"
    assert get_task("lung").ct_window == (-1000.0, 500.0)
    # caching that fits 24 GB: Heart in memory, Brain and Lung on disk
    assert [get_task(n).cache for n in ("heart", "brain", "lung")] == ["memory", "disk", "disk"]


def test_unknown_task_and_bad_specs():
    with pytest.raises(KeyError, match="Unknown task 'liver'.*heart"):
        get_task("liver")
    with pytest.raises(ValueError, match="class names"):
        TaskSpec("x", "msd", 1, 3, ("a", "b"), "mri")
    with pytest.raises(ValueError, match="kind"):
        TaskSpec("x", "nifti", 1, 2, ("a", "b"), "mri")
    with pytest.raises(ValueError, match="ct_window"):
        TaskSpec("x", "msd", 1, 2, ("a", "b"), "ct")
    with pytest.raises(ValueError, match="intensity_stats"):
        TaskSpec("x", "msd", 1, 2, ("a", "b"), "mri", intensity_stats=(100.0, 0.0))
    with pytest.raises(ValueError, match="intensity_stats"):
        TaskSpec("x", "msd", 1, 2, ("a", "b"), "ct", ct_window=(0.0, 1.0), intensity_stats=(0.0, 1.0))


def test_cli_and_registry_do_not_import_monai(subprocess_env):
    # importing MONAI takes seconds: `onenet-med --help` and the task registry must not pay for it
    code = (
        "import sys, onenet_med.cli as c; c.build_parser(); from onenet_med.data import get_task; "
        "print('monai' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


@pytest.mark.parametrize("name", list_tasks())
def test_spec_json_round_trip(name):
    import json

    spec = get_task(name)
    text = json.dumps(spec.to_dict())  # what a trained model saves beside its checkpoint
    assert TaskSpec.from_dict(json.loads(text)) == spec


def test_spec_from_dict_rejects_unknown_fields():
    data = {**get_task("heart").to_dict(), "colour": "red"}
    with pytest.raises(ValueError, match=r"unknown fields \['colour'\]"):
        TaskSpec.from_dict(data)
