"""The embedded demo dataset: real MRI, offline, from the MNI152 template files shipped in the nilearn wheel.

Source: ``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz`` (the MNI ICBM152
2009a template as nilearn ships it: 197 x 233 x 189 at 1 mm, uint8, the T1 skull-stripped). Labels:

* 0 outside the brain (brain mask = the template's non-zero T1 voxels, one connected component),
* inside the brain, the arg-max of (CSF/other = 1 - p_GM - p_WM, p_GM, p_WM) -> 1 CSF/other brain,
  2 grey matter, 3 white matter (about 8% / 58% / 34% of the brain).

The brain's axial extent is cut into ``n_cases`` contiguous slabs, each saved as its own case with its
own affine (shifted so that every slab keeps its place in MNI space). Slabs are contiguous, not
interleaved, so that validation slices are not near-copies of training slices; note that all slabs come
from one (average) brain, so this is a demo of the pipeline, not a benchmark.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["DEMO_SOURCES", "build_demo_dataset", "demo_source_paths", "tissue_labels"]

DEMO_SOURCES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
_LICENCE = (
    "MNI ICBM152 2009a template, (c) McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill "
    "University; redistributed in the nilearn package, whose dataset notes list the licence as 'unknown'. "
    "Terms of the original: http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009 . Derived labels: "
    "onenet-med (Apache-2.0)."
)
_REFERENCE = (
    "Fonov et al., NeuroImage 47 (2009) S102 and 54 (2011) 313-327; files as shipped in the nilearn package "
    "(nilearn/datasets/data)."
)


def demo_source_paths() -> dict[str, Path]:
    """Paths of the three nilearn files (T1, GM, WM); no download.

    Raises:
        ModuleNotFoundError: when nilearn is not installed (``pip install onenet-med[demo]``).
        FileNotFoundError: when the installed nilearn lacks one of the files.
    """
    try:
        base = resources.files("nilearn.datasets.data")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "The demo dataset is built from files shipped with nilearn: pip install 'onenet-med[demo]'."
        ) from None
    paths = {k: Path(str(base / name)) for k, name in DEMO_SOURCES.items()}
    for p in paths.values():
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found in the installed nilearn (needs nilearn >= 0.10).")
    return paths


def tissue_labels(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Tissue label map (uint8) from the template T1 and GM/WM probability maps (any scale, same shape).

    0 where the T1 is zero (outside the skull-stripped brain); inside, arg-max of
    (1 - p_GM - p_WM, p_GM, p_WM) + 1 -> 1 CSF/other, 2 GM, 3 WM (ties go to the lower class).
    """
    if not (t1.shape == gm.shape == wm.shape):
        raise ValueError(f"T1 {t1.shape}, GM {gm.shape} and WM {wm.shape} must have the same shape.")
    p_gm = gm.astype(np.float32) / max(float(gm.max()), 1e-6)
    p_wm = wm.astype(np.float32) / max(float(wm.max()), 1e-6)
    p_csf = np.clip(1.0 - p_gm - p_wm, 0.0, 1.0)
    tissue = np.argmax(np.stack([p_csf, p_gm, p_wm]), axis=0).astype(np.uint8) + 1
    return np.where(t1 > 0, tissue, 0).astype(np.uint8)


def build_demo_dataset(out_dir: str | os.PathLike, n_cases: int = 4, step: int = 1, overwrite: bool = False) -> Path:
    """Write the MSD-layout demo task (``dataset.json``, ``imagesTr/``, ``labelsTr/``) into ``out_dir``.

    Args:
        out_dir: the task folder to create (written to a temporary sibling, then renamed).
        n_cases: number of axial slabs (cases) the brain is cut into (>= 2 so a split by case exists).
        step: keep every ``step``-th voxel along each axis (1 = full 1 mm resolution; tests use 3-4); the
            affine's voxel size is scaled to match.
        overwrite: replace an existing ``out_dir``.

    Returns:
        ``out_dir`` as a Path.
    """
    import nibabel as nib

    out = Path(out_dir)
    if n_cases < 2:
        raise ValueError(f"n_cases must be >= 2 (a train/validation split by case), got {n_cases}.")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}.")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass overwrite=True / --overwrite to replace it).")
    src = demo_source_paths()
    t1_img = nib.load(src["t1"])
    t1 = np.asanyarray(t1_img.dataobj)[::step, ::step, ::step]
    gm = np.asanyarray(nib.load(src["gm"]).dataobj)[::step, ::step, ::step]
    wm = np.asanyarray(nib.load(src["wm"]).dataobj)[::step, ::step, ::step]
    labels = tissue_labels(t1, gm, wm)
    affine = t1_img.affine.copy()
    affine[:3, :3] = affine[:3, :3] * step
    z_brain = np.flatnonzero((labels > 0).any(axis=(0, 1)))
    if len(z_brain) < n_cases:
        raise ValueError(f"only {len(z_brain)} axial slices contain brain at step {step}; cannot make {n_cases} cases.")
    slabs = np.array_split(np.arange(z_brain[0], z_brain[-1] + 1), n_cases)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    try:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        training = []
        for i, zs in enumerate(slabs):
            case = f"mni_{i:03d}"
            slab_affine = affine.copy()
            slab_affine[:3, 3] = affine[:3, :3] @ np.array([0, 0, zs[0]]) + affine[:3, 3]
            for folder, data in (("imagesTr", t1[..., zs]), ("labelsTr", labels[..., zs])):
                img = nib.Nifti1Image(np.ascontiguousarray(data).astype(np.uint8), slab_affine)
                img.header.set_xyzt_units("mm")
                img.set_qform(slab_affine, code=4)  # 4 = MNI152
                img.set_sform(slab_affine, code=4)
                nib.save(img, tmp / folder / f"{case}.nii.gz")
            training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
        meta = {
            "name": "MNI152Tissue",
            "description": f"Brain tissue on the MNI152 2009a T1 template, {n_cases} axial slabs as cases "
            f"(voxel {step} mm); built by onenet-med from nilearn's bundled files.",
            "reference": _REFERENCE,
            "licence": _LICENCE,
            "release": "1.0",
            "tensorImageSize": "3D",
            "modality": {"0": "T1w"},
            "labels": {"0": "background", "1": "CSF/other brain", "2": "grey matter", "3": "white matter"},
            "numTraining": len(training),
            "numTest": 0,
            "training": training,
            "test": [],
        }
        with open(tmp / "dataset.json", "w") as f:
            json.dump(meta, f, indent=2)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
