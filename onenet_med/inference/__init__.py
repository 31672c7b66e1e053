"""Slice-wise inference: writers (and the prediction API)."""

from onenet_med.inference.writers import AtomicITKWriter, AtomicNibabelWriter, AtomicPILWriter, atomic_writer

__all__ = ["AtomicITKWriter", "AtomicNibabelWriter", "AtomicPILWriter", "atomic_writer"]
