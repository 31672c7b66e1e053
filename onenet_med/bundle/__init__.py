"""What the MONAI bundles need from the package, in one place: the factories their configs call
(:mod:`~onenet_med.bundle.workflow`), the task saved with a model (:mod:`~onenet_med.bundle.record`), the saved
train / validation split (:mod:`~onenet_med.bundle.split`), reading a bundle's configs from Python
(:mod:`~onenet_med.bundle.config`) and the input/output file names of prediction (:mod:`~onenet_med.bundle.inputs`).

Imports are lazy: ``onenet-med --help`` does not pay for MONAI.
"""

from __future__ import annotations

from onenet_med._lazy import lazy_attributes

_LAZY = {
    "load_bundle_config": "config",
    "saved_datalists": "config",
    "IMAGE_SUFFIXES": "inputs",
    "expand_inputs": "inputs",
    "output_name": "inputs",
    "bundle_root": "workflow",
    "bundle_task": "workflow",
    "default_dataset_dir": "workflow",
    "default_device": "workflow",
    "get_inferer": "workflow",
    "init_distributed": "workflow",
    "is_main_process": "workflow",
    "resolve_task": "workflow",
    "TASK_RECORD": "record",
    "TaskRecordSaver": "record",
    "build_network": "record",
    "read_task_record": "record",
    "read_split": "split",
    "write_split": "split",
    "inference_datalist": "workflow",
    "inference_postprocessing": "workflow",
    "prepare_datalists": "workflow",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
