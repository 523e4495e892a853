"""The contract every gradspace optimizer passes, importable so users can check their own configurations.

:data:`optim_db` lists one :class:`OptimizerInfo` per preset and a sampled set of :class:`~gradspace.SubspaceOptimizer`
combinations (every projector, rule, residual and ``on_refresh`` at least once); :mod:`gradspace.testing.contract`
holds the checks (exact resume, reference equivalence, NaN policy, …) as plain functions that raise
``AssertionError``.

Examples:
    >>> import torch, gradspace
    >>> from gradspace.testing import check_state_dict_resume, make_params
    >>> make = lambda params: gradspace.SubspaceOptimizer(params, lr=1e-2, rank=2, refresh_every=3)
    >>> check_state_dict_resume(make, make_params([(8, 6), (5,)]), steps_before=4, steps_after=4)
"""

from .contract import (
    assert_state_unchanged,
    check_deepcopy,
    check_matches_reference,
    check_finite_spike,
    check_nonfinite_skip,
    check_state_dict_resume,
    check_state_types,
    check_zero_grad_noop,
    make_params,
    run_steps,
    set_grads,
)
from .optim_db import DEFAULT_SHAPES, OptimizerInfo, optim_db

__all__ = [
    "OptimizerInfo", "optim_db", "DEFAULT_SHAPES", "make_params", "set_grads", "run_steps", "assert_state_unchanged",
    "check_state_dict_resume", "check_matches_reference", "check_zero_grad_noop", "check_nonfinite_skip", "check_finite_spike",
    "check_deepcopy", "check_state_types",
]
