"""Telemetry through the loggers you already have: a ``transformers.Trainer`` callback and a Lightning callback.

Both attach a :class:`gradspace.diagnostics.Telemetry` to the training optimizer when training starts and, at each
logging step, log the newest row of every weight (:attr:`Telemetry.records`; keys from
:data:`gradspace.diagnostics.FIELDS`) as flat scalars — ``gradspace/<weight>/energy``,
``gradspace/<weight>/overlap`` … — plus means over the weights (``gradspace/energy_mean``, …):

* :class:`TelemetryTrainerCallback` adds them to the Trainer's ``logs`` in ``on_log`` (console, ``log_history``,
  ``trainer_state.json`` and every ``report_to`` backend — see :func:`add_telemetry_callback` for the order);
* :class:`TelemetryLightningCallback` calls ``pl_module.log_dict`` (every Lightning logger, at
  ``log_every_n_steps``).

The classes live in :mod:`gradspace.integrations.hf_callback` and :mod:`gradspace.integrations.lightning_callback`
and are imported on first access here, so importing this module needs neither transformers nor Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.optim import Optimizer

__all__ = ["TelemetryTrainerCallback", "TelemetryLightningCallback", "add_telemetry_callback", "latest_metrics",
           "STEP_FIELDS", "REFRESH_FIELDS"]

#: what a *step* row contributes per weight (see :data:`gradspace.diagnostics.FIELDS`)
STEP_FIELDS = ("energy", "grad_erank", "grad_stable_rank", "momentum_erank", "resid_scale_mean", "resid_limiter")
#: what a *refresh* row contributes per weight
REFRESH_FIELDS = ("overlap", "angle_max_deg")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def latest_metrics(
    records: Sequence[dict[str, Any]] | Any,
    *,
    prefix: str = "gradspace",
    per_weight: bool = True,
    step_fields: Sequence[str] = STEP_FIELDS,
    refresh_fields: Sequence[str] = REFRESH_FIELDS,
    after: dict[tuple[str, str], int] | None = None,
) -> dict[str, float]:
    """The newest step row and refresh row of every weight as flat scalars, plus their means over the weights.

    ``{prefix}/{weight}/{field}`` for each finite field of the newest row of each kind (``per_weight=True``), and
    ``{prefix}/{field}_mean`` over the weights, plus ``{prefix}/refreshes`` (refresh rows that are new). With
    ``after`` (a ``{(weight, kind): step}`` dict, updated in place), only rows newer than the steps in it count, so a
    logger sees each row once.

    Args:
        records: Telemetry rows (``Telemetry.records``), oldest first.
        prefix: the first name component.
        per_weight: also one scalar per weight and field (else only the means).
        step_fields: fields taken from ``kind="step"`` rows.
        refresh_fields: fields taken from ``kind="refresh"`` rows.
        after: the steps already reported, per (weight, kind).

    Example:
        >>> rows = [{"step": 0, "param": "w", "kind": "step", "energy": 0.5},
        ...         {"step": 0, "param": "w", "kind": "refresh", "overlap": float("nan")},
        ...         {"step": 2, "param": "w", "kind": "step", "energy": 0.75}]
        >>> latest_metrics(rows)
        {'gradspace/w/energy': 0.75, 'gradspace/energy_mean': 0.75, 'gradspace/refreshes': 1.0}
    """
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    refreshes = 0
    for row in records:
        key = (str(row.get("param")), str(row.get("kind")))
        if after is not None and key in after and int(row.get("step", -1)) <= after[key]:
            continue
        newest[key] = row
        refreshes += row.get("kind") == "refresh"
    out: dict[str, float] = {}
    means: dict[str, list[float]] = {}
    for (param, kind), row in newest.items():
        if after is not None:
            after[(param, kind)] = int(row.get("step", -1))
        for field in step_fields if kind == "step" else refresh_fields if kind == "refresh" else ():
            value = row.get(field)
            if _finite(value):
                if per_weight:
                    out[f"{prefix}/{param}/{field}"] = float(value)
                means.setdefault(field, []).append(float(value))
    out.update({f"{prefix}/{field}_mean": sum(v) / len(v) for field, v in means.items()})
    if newest:
        out[f"{prefix}/refreshes"] = float(refreshes)
    return out


def _inner(optimizer: Any) -> Optimizer:
    """The torch optimizer under accelerate's / Lightning's wrappers (their ``step`` calls it, so its hooks fire)."""
    seen = set()
    while id(optimizer) not in seen:
        seen.add(id(optimizer))
        from ..optimizer import SubspaceOptimizer

        if isinstance(optimizer, SubspaceOptimizer):
            return optimizer
        nxt = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if nxt is None:
            break
        optimizer = nxt
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"telemetry callback: cannot find a torch optimizer in {type(optimizer).__name__}.")
    return optimizer


class _Bridge:
    """What both callbacks share: attach a Telemetry, turn its new rows into scalars."""

    def __init__(self, every: int | None, per_weight: bool, prefix: str, telemetry_options: dict[str, Any]) -> None:
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"every={every!r} must be None (the logging interval) or an int >= 1.")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix={prefix!r} must be a non-empty string.")
        self.every = every
        self.per_weight = per_weight
        self.prefix = prefix
        self.telemetry_options = telemetry_options
        self.telemetry: Any = None
        self._reported: dict[tuple[str, str], int] = {}

    def attach(self, optimizer: Any, model: nn.Module | None, default_every: int) -> None:
        from ..diagnostics import Telemetry

        if self.telemetry is not None:
            return
        names = model if isinstance(model, nn.Module) else None
        self.telemetry = Telemetry(_inner(optimizer), every=self.every or max(1, int(default_every)), names=names,
                                   **{"tensorboard": False, **self.telemetry_options})

    def metrics(self) -> dict[str, float]:
        if self.telemetry is None:
            return {}
        return latest_metrics(self.telemetry.records, prefix=self.prefix, per_weight=self.per_weight,
                              after=self._reported)

    def close(self) -> None:
        if self.telemetry is not None:
            self.telemetry.close()


_LAZY = {"TelemetryTrainerCallback": ".hf_callback", "TelemetryLightningCallback": ".lightning_callback"}


def __getattr__(name: str) -> type:
    if name in _LAZY:  # imported on first use: this module needs neither transformers nor Lightning
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_telemetry_callback(trainer: Any, every: int | None = None, **options: Any) -> Any:
    """Create a :class:`TelemetryTrainerCallback` and put it first among ``trainer``'s callbacks.

    transformers runs the ``report_to`` integrations (TensorBoard, W&B, MLflow, ...) before the callbacks passed to
    ``Trainer(callbacks=...)``, so statistics added to ``logs`` there reach the console and ``log_history`` but not
    those backends; first in line, they reach every one.

    Args:
        trainer: a ``transformers.Trainer``.
        every: as :class:`TelemetryTrainerCallback`.
        **options: the callback's other arguments.

    Returns:
        The callback (its ``telemetry`` is set once training starts).
    """
    callback = __getattr__("TelemetryTrainerCallback")(every, **options)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
