import numpy as np
import pytest

from onenet_med.report import label_volumes_ml, machine_info, markdown_table

NAMES = ("background", "csf", "grey", "white")


@pytest.mark.parametrize(
    "voxel_mm3,background,expected",
    [
        (1.0, False, {"csf": 0.002, "grey": 0.003, "white": 0.0}),
        (500.0, False, {"csf": 1.0, "grey": 1.5, "white": 0.0}),
        (1000.0, True, {"background": 1.0, "csf": 2.0, "grey": 3.0, "white": 0.0}),
    ],
)
def test_label_volumes_hand_computed(voxel_mm3, background, expected):
    labels = np.array([[0, 1, 1], [2, 2, 2]])  # 1 background, 2 csf, 3 grey, 0 white voxels
    assert label_volumes_ml(labels, voxel_mm3, NAMES, include_background=background) == pytest.approx(expected)


def test_label_volumes_bad_input():
    with pytest.raises(ValueError, match="only 4 classes"):
        label_volumes_ml(np.array([0, 5]), 1.0, NAMES)
    with pytest.raises(ValueError, match="voxel_volume_mm3"):
        label_volumes_ml(np.array([0, 1]), 0.0, NAMES)


def test_markdown_table_exact():
    text = markdown_table(["Method", "Dice", "n"], [["a", 0.91234, 3], ["b", float("nan"), None]], digits=3)
    assert text == "| Method | Dice | n |\n| --- | ---: | ---: |\n| a | 0.912 | 3 |\n| b | – | – |\n"
    with pytest.raises(ValueError, match="2 cells"):
        markdown_table(["a", "b", "c"], [[1, 2]])


def test_machine_info_names_what_timings_depend_on():
    info = machine_info()
    assert info["usable_cores"] >= 1 and info["torch_threads"] >= 1
    assert {"cpu", "gpu", "torch", "monai", "memory_gib"} <= set(info)
