"""Reports of training runs and model comparisons: curves read back from a bundle run, PNG plots, summaries.

Cohort tables and agreement statistics of ``onenet-med predict``: :mod:`onenet_med.report.cohort`.

Used by ``onenet-med compare`` (:mod:`onenet_med.compare`; its report.md: :mod:`onenet_med.report.compare`) and the
notebooks.
"""

from onenet_med.report.cohort import (
    bland_altman,
    flag_cases,
    pearson,
    robust_z_scores,
    spearman,
    write_agreement_report,
    write_volume_table,
)
from onenet_med.report.compare import write_report
from onenet_med.report.curves import RunCurves, epoch_length_from_checkpoint, read_run_curves, read_scalars
from onenet_med.report.plots import plot_class_dice, plot_dice_curves, plot_loss_curves, plot_overlays
from onenet_med.report.summary import label_volumes_ml, machine_info, markdown_table

__all__ = [
    "RunCurves",
    "bland_altman",
    "flag_cases",
    "pearson",
    "robust_z_scores",
    "spearman",
    "write_agreement_report",
    "write_volume_table",
    "epoch_length_from_checkpoint",
    "label_volumes_ml",
    "machine_info",
    "markdown_table",
    "plot_class_dice",
    "plot_dice_curves",
    "plot_loss_curves",
    "plot_overlays",
    "read_run_curves",
    "read_scalars",
    "write_report",
]
