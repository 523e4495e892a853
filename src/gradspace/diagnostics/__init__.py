"""Instruments: see the subspace that training lives in — live, cheaply, and as pictures.

* :mod:`~gradspace.diagnostics.telemetry` — :class:`Telemetry` (per-weight captured energy, subspace drift at
  refreshes, effective ranks of gradient and momentum, fira/apollo residual scales; CSV/JSONL/TensorBoard), attached
  with optimizer step hooks; it reads what the update records (``refresh="adaptive"`` needs no hook at all).
* :mod:`~gradspace.diagnostics.hessian` — Hessian-vector products, :func:`hessian_eigs` (Lanczos with full
  reorthogonalization, or power iteration), Hutchinson/Hutch++ traces, SLQ spectral density, :func:`per_layer`.
* :mod:`~gradspace.diagnostics.subspace` — captured energy, principal angles, overlaps, effective ranks.
* :mod:`~gradspace.diagnostics.trajectory` — parameter-trajectory PCA against the random-walk prediction.
* ``gradspace analyze NAME`` — reproductions of the measurement papers that double as regression benchmarks
  (:mod:`gradspace.diagnostics.analyses`); ``python -m gradspace.diagnostics.overhead`` — telemetry overhead.

Only torch is needed; matplotlib (``pip install -e ".[plot]"`` from a checkout) and scikit-learn (``.[bench]``) are
imported by the analyses that draw or load data.
"""

from .hessian import (
    HessianOperator,
    LanczosResult,
    SpectralDensity,
    TraceEstimate,
    dense_hessian,
    flatten,
    hessian_density,
    hessian_eigs,
    hessian_trace,
    hutchinson_trace,
    hutchpp_trace,
    hvp,
    lanczos,
    parameter_blocks,
    per_layer,
    power_iteration,
    spectral_density,
    unflatten,
)
from .subspace import (
    alignment,
    captured_energy,
    entropy_effective_rank,
    orthonormal_basis,
    principal_angles,
    random_overlap,
    stable_rank,
    subspace_overlap,
)
from .telemetry import FIELDS, Telemetry
from .trajectory import TrajectoryPCA, TrajectoryRecorder, cosine_correlation, random_walk_ratios, trajectory_pca

__all__ = [
    "Telemetry", "FIELDS",
    "HessianOperator", "hvp", "dense_hessian", "hessian_eigs", "hessian_trace", "hessian_density", "per_layer",
    "parameter_blocks", "lanczos", "power_iteration", "hutchinson_trace", "hutchpp_trace", "spectral_density",
    "LanczosResult", "TraceEstimate", "SpectralDensity", "flatten", "unflatten",
    "captured_energy", "alignment", "orthonormal_basis", "principal_angles", "subspace_overlap", "random_overlap",
    "entropy_effective_rank", "stable_rank",
    "TrajectoryRecorder", "TrajectoryPCA", "trajectory_pca", "random_walk_ratios", "cosine_correlation",
]
