"""Live optimizer telemetry: what each weight's subspace captures, how it drifts, and how rank-deficient the gradient and
the momentum are — recorded by optimizer step hooks (never by patching ``step``), cheap enough to leave on.

Per matrix weight, every ``every`` steps (a *step* row):

* ``energy`` = ‖G P‖²_F / ‖G‖²_F, the gradient energy captured by the subspace the step used (P the orthogonal
  projector onto span(Q), so Gaussian random bases, whose QᵀQ ≠ I, are measured correctly);
* ``grad_erank`` / ``grad_stable_rank``: entropy effective rank (Roy & Vetterli 2007) and stable rank of G;
* ``momentum_erank``: effective rank of the rule's first moment, mapped to weight space (``M Qᵀ``);
* ``resid_scale_mean|min|max`` and ``resid_limiter`` for ``residual="fira"|"apollo"``: the per-channel scale
  φ = ‖d‖/‖r‖ the residual applied this step and the norm-growth limiter's shrink factor (1 = not limited).

At every basis refresh (a change of ``state["proj.count"]``), a *refresh* row: ``overlap`` = ‖Q̃_oldᵀ Q̃_new‖²_F / r,
the smallest and largest principal angles in degrees, and the captured energy of the step's gradient in the old
(``energy_old_basis``) and new (``energy``) bases. Continuous projectors (online PCA) move at every step; for them a
refresh row compares the bases at consecutive logged steps.

Rows go to memory (:attr:`Telemetry.records`), CSV, JSONL and TensorBoard (when ``tensorboard`` is installed).

For gradspace optimizers nothing is replayed: the hooks ask the step to record what it measured
(:meth:`gradspace.SubspaceOptimizer.observe_next_step`) — the captured energy of the (error-fed) gradient it projected,
the bases before and after a refresh, the residual's scale φ and the limiter's factor — and read
``optimizer.last_records``. Other ``torch.optim`` optimizers are observed in full space from their gradients.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..frame import matrix_shape
from ..registry import PROJECTORS, RULES
from .subspace import entropy_effective_rank, principal_angles, subspace_overlap

__all__ = ["Telemetry", "FIELDS"]

#: Columns of every row (CSV header); a row leaves the ones that do not apply empty.
FIELDS = (
    "step", "param", "kind", "shape", "rank", "refresh_count", "grad_norm", "energy", "energy_old_basis", "overlap",
    "angle_min_deg", "angle_max_deg", "grad_erank", "grad_stable_rank", "momentum_erank", "resid_scale_mean",
    "resid_scale_min", "resid_scale_max", "resid_limiter",
)

_FULL_SPACE_MOMENTS = ("exp_avg", "momentum_buffer")  # torch.optim's first moments, for non-gradspace optimizers


@dataclass
class _Weight:
    """What the hooks remember about one parameter between steps."""

    name: str
    logged_basis: Tensor | None = None  # continuous projectors: the basis at the last recorded step


def _names(optimizer: Optimizer, names: nn.Module | Mapping[Tensor, str] | None) -> dict[Tensor, str]:
    out: dict[Tensor, str] = {}
    if isinstance(names, nn.Module):
        out = {p: n for n, p in names.named_parameters()}
    elif names is not None:
        out = dict(names)
    index = 0
    for group in optimizer.param_groups:
        listed = group.get("param_names") or [None] * len(group["params"])
        for p, n in zip(group["params"], listed):
            out.setdefault(p, n or f"param{index}")
            index += 1
    return out


def _full_space_record(p: Tensor, want_spectra: bool) -> dict[str, Any] | None:
    """What a full-space optimizer's step sees of a matrix weight (its gradient, as the rows × cols matrix)."""
    shape = matrix_shape(p.shape)
    if shape is None or p.grad is None:
        return None
    x = p.grad.detach().reshape(shape).float()
    rec: dict[str, Any] = {"energy": torch.ones((), device=x.device), "grad_norm": x.norm(), "basis": None,
                           "refreshed": False, "orthonormal": True, "oriented_shape": tuple(x.shape)}
    if want_spectra:
        rec["grad_sv"] = torch.linalg.svdvals(x)
    return rec


class Telemetry:
    """Per-weight subspace telemetry f = ‖G P‖²/‖G‖², drift ‖Q̃_oldᵀQ̃_new‖²/r, erank(G), erank(M) (Roy & Vetterli 2007)
    every ``every`` steps, attached with ``optimizer.register_step_post_hook`` (Zhao et al. 2024, GaLore, for the
    captured energy; Gur-Ari et al. 2018 for the overlap).

    Args:
        optimizer: a :class:`gradspace.SubspaceOptimizer`/preset, or any ``torch.optim`` optimizer (then every weight
            is "full space": energy 1, and the momentum is ``exp_avg``/``momentum_buffer``).
        every: record a step row every ``every`` steps (≥ 1; default 10). Refresh rows are written whenever a basis
            changes.
        path: folder for ``telemetry.csv`` / ``telemetry.jsonl`` (and TensorBoard events under ``path/tb``); ``None``
            keeps rows in memory only.
        formats: which files to write, among ``"csv"`` and ``"jsonl"``.
        tensorboard: ``"auto"`` (default: write events when ``tensorboard`` is installed and ``path`` is set), ``True``
            (require it) or ``False``.
        names: a module (parameter names from ``named_parameters``) or a ``{param: name}`` mapping; default: the
            groups' ``param_names``, else ``param{i}``.
        spectra_every: steps between the effective-rank statistics (one ``svdvals`` of each gradient: by far the
            costliest statistic); default ``10 * every``; 0 turns them off. A multiple of ``every`` is used.
        max_records: rows kept in :attr:`records` (oldest dropped; default 100 000).

    Attributes:
        records: recent rows (dicts with :data:`FIELDS` keys). seconds: total time spent in the hooks.
        calls: steps observed (not counting paused ones). paused: see :meth:`pause`.

    Examples:
        >>> import gradspace
        >>> model = torch.nn.Linear(32, 16)
        >>> opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-2, rank=4, refresh_every=5, residual="fira")
        >>> tel = Telemetry(opt, every=2, names=model)
        >>> for _ in range(6):
        ...     opt.zero_grad(); model(torch.randn(8, 32)).square().mean().backward(); opt.step()
        >>> rows = [r for r in tel.records if r["kind"] == "step"]
        >>> [r["step"] for r in rows], rows[0]["param"], 0.0 < rows[0]["energy"] <= 1.0
        ([0, 2, 4], 'weight', True)
        >>> [r["step"] for r in tel.records if r["kind"] == "refresh"]   # bases replaced at steps 0 and 5
        [0, 5]
        >>> tel.close()
    """

    def __init__(
        self,
        optimizer: Optimizer,
        every: int = 10,
        *,
        path: str | os.PathLike | None = None,
        formats: tuple[str, ...] = ("csv", "jsonl"),
        tensorboard: bool | str = "auto",
        names: nn.Module | Mapping[Tensor, str] | None = None,
        spectra_every: int | None = None,
        max_records: int = 100_000,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every={every!r} must be an int >= 1 (record every k-th step).")
        unknown = set(formats) - {"csv", "jsonl"}
        if unknown:
            raise ValueError(f"formats {sorted(unknown)} not supported; choose among 'csv', 'jsonl'.")
        if tensorboard not in (True, False, "auto"):
            raise ValueError(f"tensorboard={tensorboard!r} must be True, False or 'auto'.")
        self.optimizer = optimizer
        self.every = every
        if spectra_every is None:
            spectra_every = 10 * every
        if isinstance(spectra_every, bool) or not isinstance(spectra_every, int) or spectra_every < 0:
            raise ValueError(f"spectra_every={spectra_every!r} must be an int >= 0 (0: no effective ranks).")
        self.spectra_every = 0 if spectra_every == 0 else max(every, spectra_every - spectra_every % every)
        self.records: deque[dict[str, Any]] = deque(maxlen=max_records)
        self.seconds = 0.0
        self.calls = 0
        self.paused = False
        self._names = _names(optimizer, names)
        self._weights: dict[Tensor, _Weight] = {}
        self._files: list[Any] = []
        self._csv = self._jsonl = self._tb = None
        if path is not None:
            os.makedirs(path, exist_ok=True)
            if "csv" in formats:
                f = open(os.path.join(path, "telemetry.csv"), "w", newline="")
                self._files.append(f)
                self._csv = csv.DictWriter(f, fieldnames=FIELDS)
                self._csv.writeheader()
            if "jsonl" in formats:
                self._jsonl = open(os.path.join(path, "telemetry.jsonl"), "w")
                self._files.append(self._jsonl)
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                if tensorboard is True:
                    raise ImportError(
                        "Telemetry(tensorboard=True) needs the tensorboard package: pip install tensorboard"
                    ) from err
            else:
                if path is not None:
                    self._tb = SummaryWriter(os.path.join(path, "tb"))
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_hook),
            optimizer.register_step_post_hook(self._post_hook),
        ]

    # ----------------------------------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Detach the hooks and close the files (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for f in self._files:
            f.close()
        self._files = []
        self._csv = self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------------------- hooks
    def _recording(self) -> bool:
        return self.calls % self.every == 0

    def pause(self) -> None:
        """Stop recording (e.g. during evaluation). :meth:`resume` restarts."""
        self.paused = True

    def resume(self) -> None:
        """Record again after :meth:`pause` (the cadence continues from the steps recorded so far)."""
        self.paused = False

    def _weight(self, p: Tensor) -> _Weight:
        w = self._weights.get(p)
        if w is None:
            w = self._weights[p] = _Weight(self._names.get(p, "?"))
        return w

    def _spectra(self) -> bool:
        return bool(self.spectra_every) and self.calls % self.spectra_every == 0

    def _pre_hook(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        """Ask the step to record its measurements on recorded steps and on steps where some basis is refreshed."""
        if self.paused or not hasattr(optimizer, "observe_next_step"):
            return
        t0 = time.perf_counter()
        from ..functional import needs_refresh

        want = self._recording()
        if not want:
            for group in optimizer.param_groups:
                projector = PROJECTORS.get(group.get("projector"))
                if projector is None or projector.full_space or projector.continuous:
                    continue
                if any(p.grad is not None and optimizer.state.get(p) and needs_refresh(optimizer.state[p], group)
                       for p in group["params"] if matrix_shape(p.shape) is not None):
                    want = True
                    break
        if want:
            optimizer.observe_next_step(spectra=self._recording() and self._spectra())
        self.seconds += time.perf_counter() - t0

    def _post_hook(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if self.paused:
            return
        t0 = time.perf_counter()
        record = self._recording()
        records = getattr(optimizer, "last_records", None)
        gradspace = records is not None
        rows: list[dict[str, Any]] = []
        values: list[Tensor] = []  # 0-d tensors, fetched from the device in one transfer
        for group in optimizer.param_groups:
            for p in group["params"]:
                state = optimizer.state.get(p)
                if p.grad is None or not state or matrix_shape(p.shape) is None:
                    continue
                rec = records.get(p) if gradspace else (_full_space_record(p, self._spectra()) if record else None)
                if rec is not None and "energy" in rec:
                    self._observe(p, state, group, rec, record, rows, values)
        if rows:
            fetched = torch.stack(values).double().cpu().tolist() if values else []
            for row in rows:
                for key, value in row.items():
                    if isinstance(value, _Slot):
                        row[key] = fetched[value.index]
                self._emit(row)
        self.calls += 1
        self.seconds += time.perf_counter() - t0

    def _observe(self, p, state, group, rec, record, rows, values) -> None:
        w = self._weight(p)
        step = int(state.get("step", self.calls + 1)) - 1
        count = int(state.get("proj.count", 0))
        q = rec["basis"]
        projected = q is not None
        rank = q.shape[1] if projected else rec["oriented_shape"][1]

        def slot(t: Tensor) -> _Slot:
            values.append(t.detach().reshape(()).float())
            return _Slot(len(values) - 1)

        base = {"step": step, "param": w.name, "shape": "x".join(map(str, p.shape)), "rank": rank, "refresh_count": count}
        if projected:
            projector = PROJECTORS[group["projector"]]
            if projector.continuous:
                changed, old = record, w.logged_basis
                if record:
                    w.logged_basis = q
            else:
                changed, old = rec["refreshed"], rec.get("basis_old")
            if changed:
                row = dict(base, kind="refresh", energy=slot(rec["energy"]))
                if old is not None and old.shape == q.shape:
                    angles = principal_angles(old, q)
                    row.update(overlap=slot(subspace_overlap(old, q)), angle_min_deg=slot(torch.rad2deg(angles[0])),
                               angle_max_deg=slot(torch.rad2deg(angles[-1])))
                    if "energy_old_basis" in rec:
                        row["energy_old_basis"] = slot(rec["energy_old_basis"])
                if old is not None or not projector.continuous:
                    rows.append(row)
        if not record:
            return
        row = dict(base, kind="step", grad_norm=slot(rec["grad_norm"]), energy=slot(rec["energy"]))
        if "grad_sv" in rec:
            sv = rec["grad_sv"]
            row["grad_erank"] = slot(entropy_effective_rank(sv, singular_values=True))
            row["grad_stable_rank"] = slot(sv.square().sum() / sv[0].square().clamp_min(1e-30))
            m = self._momentum(state, group, q, rec["orthonormal"], projected)
            if m is not None:
                row["momentum_erank"] = slot(entropy_effective_rank(m))
        if "resid_scale" in rec:
            phi = rec["resid_scale"]
            row.update(resid_scale_mean=slot(phi.mean()), resid_scale_min=slot(phi.min()), resid_scale_max=slot(phi.max()))
        if "resid_limiter" in rec:
            row["resid_limiter"] = slot(rec["resid_limiter"])
        rows.append(row)

    @staticmethod
    def _momentum(state, group, q, ortho, projected) -> Tensor | None:
        keys = RULES[group["rule"]].linear_keys if group.get("rule") in RULES else ()
        m = next((state[k] for k in keys if k in state), None)
        if m is None:
            m = next((state[k] for k in _FULL_SPACE_MOMENTS if k in state), None)
        if m is None or m.dim() < 1:
            return None
        m = m.float().reshape(m.shape[0], -1)
        if projected and q is not None and not ortho and m.shape[1] == q.shape[1]:
            # the singular values of M Qᵀ = M Rᵀ Q̃ᵀ are those of M Rᵀ (Q = Q̃ R)
            m = m @ torch.linalg.qr(q.float(), mode="reduced")[1].T
        return m

    # --------------------------------------------------------------------------------------------------------- output
    def _emit(self, row: dict[str, Any]) -> None:
        self.records.append(row)
        if self._csv is not None:
            self._csv.writerow(row)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if isinstance(value, float) and key not in ("step",):
                    self._tb.add_scalar(f"{row['param']}/{row['kind']}/{key}", value, row["step"])
        if row["kind"] == "step":
            for f in self._files:
                f.flush()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per weight: mean/last captured energy, refresh count, mean overlap at refresh, last effective ranks.

        Examples:
            >>> import gradspace
            >>> model = torch.nn.Linear(16, 8, bias=False)
            >>> opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-2, rank=4)
            >>> with Telemetry(opt, every=1, names=model) as tel:
            ...     opt.zero_grad(); model(torch.randn(2, 16)).sum().backward(); opt.step()
            >>> s = tel.summary()["weight"]
            >>> s["refreshes"], round(s["energy_mean"], 4)   # a rank-2 gradient: the fresh rank-4 basis holds it all
            (1, 1.0)
        """
        out: dict[str, dict[str, float]] = {}
        for row in self.records:
            s = out.setdefault(row["param"], {"_n": 0, "_e": 0.0, "_o": 0.0, "_no": 0, "refreshes": 0})
            if row["kind"] == "step":
                s["_n"] += 1
                s["_e"] += row["energy"]
                s["energy_last"] = row["energy"]
                for key in ("grad_erank", "momentum_erank"):
                    if key in row:
                        s[key + "_last"] = row[key]
            else:
                s["refreshes"] += 1
                if "overlap" in row:
                    s["_o"] += row["overlap"]
                    s["_no"] += 1
        for s in out.values():
            s["energy_mean"] = s.pop("_e") / max(s.pop("_n"), 1)
            no = s.pop("_no")
            overlap = s.pop("_o")
            s["overlap_mean"] = overlap / no if no else math.nan
        return out


@dataclass(frozen=True)
class _Slot:
    """Placeholder for a value still on the device (index into the step's batch of scalars)."""

    index: int
