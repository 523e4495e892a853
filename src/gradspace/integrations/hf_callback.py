"""``TelemetryTrainerCallback``: gradspace's live statistics in a ``transformers.Trainer``'s logs (imports
transformers; reach it as ``gradspace.integrations.callbacks.TelemetryTrainerCallback``)."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from .callbacks import _Bridge

__all__ = ["TelemetryTrainerCallback"]


class TelemetryTrainerCallback(TrainerCallback):
    """Log gradspace's live subspace statistics through the ``transformers.Trainer``'s own logging.

    On ``on_train_begin`` a :class:`~gradspace.diagnostics.Telemetry` is attached to the Trainer's optimizer
    (under accelerate's wrapper); on ``on_log`` the new rows are added to ``logs`` (see :func:`~gradspace.integrations.callbacks.latest_metrics`) and
    to the last ``state.log_history`` entry.

    Args:
        every: record a step row every ``every`` optimizer steps (default: ``args.logging_steps``).
        per_weight: one scalar per weight and field (``False``: only the means over the weights).
        prefix: first component of the logged names.
        **telemetry_options: more :class:`~gradspace.diagnostics.Telemetry` arguments (``spectra_every``,
            ``path``, ...).

    Example:
        >>> from gradspace.integrations.callbacks import TelemetryTrainerCallback, add_telemetry_callback
        >>> # trainer = transformers.Trainer(model, args, optimizers=(opt, None), ...)
        >>> # add_telemetry_callback(trainer)   # first in line, so report_to backends receive the statistics
    """

    def __init__(self, every: int | None = None, *, per_weight: bool = True, prefix: str = "gradspace",
                 **telemetry_options: Any) -> None:
        self.bridge = _Bridge(every, per_weight, prefix, telemetry_options)

    @property
    def telemetry(self) -> Any:
        """The attached :class:`~gradspace.diagnostics.Telemetry` (``None`` before training starts)."""
        return self.bridge.telemetry

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        optimizer = kwargs.get("optimizer")
        if optimizer is None:
            raise RuntimeError("TelemetryTrainerCallback: the Trainer passed no optimizer to on_train_begin.")
        self.bridge.attach(optimizer, kwargs.get("model"), getattr(args, "logging_steps", 1) or 1)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if logs is None or "loss" not in logs and "train_loss" not in logs and "learning_rate" not in logs:
            return  # an evaluation's logs: no new training rows belong there
        metrics = self.bridge.metrics()
        logs.update(metrics)
        history = getattr(state, "log_history", None)
        if metrics and history and history[-1].get("step") == state.global_step:
            history[-1].update(metrics)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.bridge.close()
