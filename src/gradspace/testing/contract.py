"""Reusable contract checks: each builds optimizers with ``make(params)``, runs them on seeded gradients and raises
``AssertionError`` naming what differs. They work for any ``torch.optim.Optimizer``, gradspace's or your own.

Gradients are synthetic and deterministic: ``G = N(0, 1) + 0.1·W`` from a generator seeded by ``(seed, step)``, so two
optimizers over equal parameters see bitwise equal gradients.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .optim_db import DEFAULT_SHAPES

Make = Callable[[list[nn.Parameter]], Optimizer]


def make_params(
    shapes: Sequence[tuple[int, ...]] = DEFAULT_SHAPES, dtype: torch.dtype = torch.float32, seed: int = 0
) -> list[nn.Parameter]:
    """Seeded parameters of the given shapes and dtype (drawn in fp32, then cast)."""
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in shapes]


def clone_params(params: Sequence[Tensor]) -> list[nn.Parameter]:
    """Independent copies of ``params`` (same values and dtypes, no gradients)."""
    return [nn.Parameter(p.detach().clone()) for p in params]


def set_grads(params: Sequence[Tensor], step: int, seed: int = 0, scale: float = 1.0) -> None:
    """Set ``p.grad = scale·(N(0, 1) + 0.1·p)`` in each parameter's dtype, seeded by ``(seed, step)``."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    for p in params:
        noise = torch.randn(p.shape, generator=gen)
        p.grad = (scale * (noise + 0.1 * p.detach().float())).to(p.dtype)


def run_steps(opt: Optimizer, params: Sequence[Tensor], steps: int, start: int = 0, seed: int = 0) -> None:
    """Take ``steps`` optimizer steps on the seeded gradients of steps ``start, start + 1, …``."""
    for i in range(start, start + steps):
        set_grads(params, i, seed)
        opt.step()


def assert_tree_equal(a: Any, b: Any, path: str = "") -> None:
    """Assert two nested structures (dicts, lists, tensors, numbers) are equal; tensors bitwise and of equal dtype."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            raise AssertionError(f"{path}: {type(a).__name__} != {type(b).__name__}")
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            raise AssertionError(f"{path}: tensors differ ({a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)})")
    elif isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            raise AssertionError(f"{path}: keys differ: {sorted(map(str, set(a) ^ set(b)))}")
        for k in a:
            assert_tree_equal(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            raise AssertionError(f"{path}: lengths differ ({len(a)} vs {len(b)})")
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tree_equal(x, y, f"{path}[{i}]")
    elif type(a) is not type(b) or a != b:
        raise AssertionError(f"{path}: {a!r} != {b!r}")


def assert_params_equal(a: Sequence[Tensor], b: Sequence[Tensor], what: str = "") -> None:
    """Assert two parameter lists are bitwise equal (values and dtypes)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x.dtype != y.dtype or not torch.equal(x, y):
            diff = (x.double() - y.double()).abs().max().item() if x.shape == y.shape else float("nan")
            raise AssertionError(f"{what}: parameter {i} {tuple(x.shape)} differs (max |Δ| = {diff:.3g})")


def assert_state_unchanged(
    before: dict[Any, Any], after: dict[Any, Any], ignore: Sequence[str] = ("nonfinite_skips",)
) -> None:
    """Assert two ``state_dict()["state"]`` snapshots are bitwise equal, ignoring the keys in ``ignore``."""
    strip = lambda s: {p: {k: v for k, v in st.items() if k not in ignore} for p, st in s.items()}  # noqa: E731
    assert_tree_equal(strip(before), strip(after), "state")


def iter_state_tensors(opt: Optimizer):
    """Yield ``(param index, key, tensor)`` for every tensor in ``opt.state_dict()["state"]``."""
    for index, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            if isinstance(value, Tensor):
                yield index, key, value


def check_state_types(opt: Optimizer) -> None:
    """Assert the state holds only tensors and Python ints/floats, and survives ``torch.load(weights_only=True)``."""
    sd = opt.state_dict()
    for index, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, bool) or not isinstance(value, (Tensor, int, float)):
                raise AssertionError(f"state[{index}][{key!r}] is a {type(value).__name__}, not a tensor or number")
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    assert_tree_equal(torch.load(buf, weights_only=True), sd, "weights_only load")


def check_state_dict_resume(
    make: Make, params: Sequence[Tensor], steps_before: int = 4, steps_after: int = 5, seed: int = 0
) -> None:
    """Save after ``steps_before`` steps (through ``torch.save``/``torch.load(weights_only=True)``), load into a fresh
    optimizer over cloned params and assert ``steps_after`` more steps are bitwise equal to the uninterrupted run."""
    pa = clone_params(params)
    a = make(pa)
    run_steps(a, pa, steps_before, seed=seed)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    snapshot = copy.deepcopy(loaded)
    pb = clone_params(pa)
    b = make(pb)
    b.load_state_dict(loaded)
    assert_tree_equal(loaded, snapshot, "loaded state_dict after load_state_dict")
    for (i, key, ta), (_, _, tb) in zip(iter_state_tensors(a), iter_state_tensors(b)):
        if ta.dtype != tb.dtype:
            raise AssertionError(f"state[{i}][{key!r}] was {ta.dtype} before saving and is {tb.dtype} after loading")
    assert_tree_equal(a.state_dict(), b.state_dict(), "state_dict after load")
    for i in range(steps_before, steps_before + steps_after):
        set_grads(pa, i, seed)
        set_grads(pb, i, seed)
        a.step()
        b.step()
        assert_params_equal(pa, pb, f"resumed run, step {i}")
    assert_tree_equal(a.state_dict()["state"], b.state_dict()["state"], "state after resumed steps")


def check_matches_reference(
    make: Make,
    make_reference: Make,
    params: Sequence[Tensor],
    steps: int = 50,
    atol: float = 1e-6,
    rtol: float = 1e-6,
    seed: int = 0,
    grad_scale: float = 1.0,
) -> None:
    """Assert ``make`` and ``make_reference`` (e.g. ``torch.optim.AdamW``) give the same parameters at every step.

    ``grad_scale=-1`` flips the gradients, so that ``maximize=True`` runs are stable (ascent on the negated loss).
    """
    pa, pb = clone_params(params), clone_params(params)
    a, b = make(pa), make_reference(pb)
    for i in range(steps):
        set_grads(pa, i, seed, grad_scale)
        set_grads(pb, i, seed, grad_scale)
        a.step()
        b.step()
        for j, (x, y) in enumerate(zip(pa, pb)):
            if not torch.allclose(x, y, atol=atol, rtol=rtol):
                diff = (x - y).abs().max().item()
                raise AssertionError(f"step {i}: parameter {j} {tuple(x.shape)} is {diff:.3g} from the reference")


def check_zero_grad_noop(make: Make, params: Sequence[Tensor], steps: int = 4) -> None:
    """With all-zero gradients (and no weight decay in ``make``), steps leave params bitwise equal and state finite."""
    p = clone_params(params)
    opt = make(p)
    for i in range(steps):
        for x in p:
            x.grad = torch.zeros_like(x)
        opt.step()
        assert_params_equal(p, params, f"zero-gradient step {i}")
        for j, key, t in iter_state_tensors(opt):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise AssertionError(f"zero-gradient step {i}: state[{j}][{key!r}] is not finite")


def check_nonfinite_skip(
    make: Make, params: Sequence[Tensor], bad: float = math.nan, steps_before: int = 3, index: int = 0
) -> None:
    """Put ``bad`` (NaN/Inf) in parameter ``index``'s gradient after ``steps_before`` steps: assert a RuntimeWarning,
    no parameter or state change, ``nonfinite_skips`` counted once, and finite state after further steps."""
    p = clone_params(params)
    opt = make(p)
    run_steps(opt, p, steps_before)
    before_params = [x.detach().clone() for x in p]
    before_state = copy.deepcopy(opt.state_dict()["state"])
    set_grads(p, steps_before)
    p[index].grad.view(-1)[0] = bad
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    if not any(issubclass(w.category, RuntimeWarning) for w in caught):
        raise AssertionError("a non-finite gradient did not warn (RuntimeWarning)")
    assert_params_equal(p, before_params, "step with a non-finite gradient")
    after_state = opt.state_dict()["state"]
    assert_state_unchanged(before_state, after_state)
    counts = [after_state.get(i, {}).get("nonfinite_skips", 0) for i in range(len(p))]
    if counts != [int(i == index) for i in range(len(p))]:
        raise AssertionError(f"nonfinite_skips per parameter is {counts}, expected 1 for parameter {index} only")
    run_steps(opt, p, 4, start=steps_before + 1)
    for j, key, t in iter_state_tensors(opt):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise AssertionError(f"state[{j}][{key!r}] became non-finite after a skipped step")
    if not all(bool(torch.isfinite(x).all()) for x in p):
        raise AssertionError("a parameter became non-finite after a skipped step")


def check_deepcopy(make: Make, params: Sequence[Tensor], steps: int = 3) -> None:
    """Assert ``copy.deepcopy((params, optimizer))`` is independent and steps bitwise identically to the original."""
    p = clone_params(params)
    opt = make(p)
    run_steps(opt, p, steps)
    p2, opt2 = copy.deepcopy((p, opt))
    if opt2.param_groups[0]["params"][0] is not p2[0]:
        raise AssertionError("the copied optimizer does not hold the copied parameters")
    for i in range(steps, 2 * steps):
        set_grads(p, i)
        set_grads(p2, i)
        opt.step()
        opt2.step()
        assert_params_equal(p, p2, f"deepcopy, step {i}")
    assert_tree_equal(opt.state_dict(), opt2.state_dict(), "deepcopy state_dict")


def check_finite_spike(make: Make, params: Sequence[Tensor], magnitude: float = 1e20, steps_before: int = 3,
                       steps_after: int = 3) -> None:
    """A finite gradient spike (entry 0 of every gradient set to ``magnitude``) after ``steps_before`` steps: the
    step must run (finite input is no NaN), and every parameter and floating state tensor must stay finite through
    it and ``steps_after`` ordinary steps (torch.optim.AdamW keeps finite weights on the same input)."""
    p = clone_params(params)
    opt = make(p)
    run_steps(opt, p, steps_before)
    set_grads(p, steps_before)
    for x in p:
        x.grad.view(-1)[0] = magnitude
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a projector may count a fallback; that is allowed
        opt.step()
        for i in range(steps_after + 1):
            where = "the spike step" if i == 0 else f"{i} step(s) after the spike"
            bad = [j for j, x in enumerate(p) if not bool(torch.isfinite(x).all())]
            if bad:
                raise AssertionError(f"a finite gradient spike of {magnitude:g}: parameter(s) {bad} non-finite after "
                                     f"{where}")
            for j, key, t in iter_state_tensors(opt):
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise AssertionError(f"a finite gradient spike of {magnitude:g}: state[{j}][{key!r}] non-finite "
                                         f"after {where}")
            if i < steps_after:
                run_steps(opt, p, 1, start=steps_before + 1 + i)
    skips = sum(st.get("nonfinite_skips", 0) for st in opt.state_dict()["state"].values())
    if skips:
        raise AssertionError(f"a finite gradient spike of {magnitude:g} was skipped as non-finite ({skips} skips)")
