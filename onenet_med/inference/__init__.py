"""Slice-wise inference on volumes: the :class:`Predictor` API (``onenet-med predict`` is a thin layer over it),
atomic writers, a SimpleITK reader for non-NIfTI formats and PNG overlays.

Example::

    from onenet_med.inference import Predictor

    predictor = Predictor.from_bundle("bundles/onenet_heart")
    result = predictor.predict_volume("la_003.nii.gz")
    print(result.volume_ml)

Imports are lazy: ``onenet-med --help`` does not pay for MONAI.
"""

from __future__ import annotations

from onenet_med._lazy import lazy_attributes

_LAZY = {
    "AXES": "predictor",
    "PredictionResult": "predictor",
    "Predictor": "predictor",
    "load_network": "predictor",
    "OnnxRuntimeNetwork": "backends",
    "preprocessing_identity": "backends",
    "export_bundle": "export",
    # re-exported from their home, onenet_med.bundle
    "IMAGE_SUFFIXES": "onenet_med.bundle.inputs",
    "expand_inputs": "onenet_med.bundle.inputs",
    "load_bundle_config": "onenet_med.bundle.config",
    "output_name": "onenet_med.bundle.inputs",
    "SimpleITKReader": "readers",
    "save_overlays": "overlays",
    "AtomicITKWriter": "writers",
    "AtomicNibabelWriter": "writers",
    "AtomicPILWriter": "writers",
    "atomic_writer": "writers",
    "write_like": "writers",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
