"""``TelemetryLightningCallback``: gradspace's live statistics through a LightningModule's loggers (imports
Lightning; reach it as ``gradspace.integrations.callbacks.TelemetryLightningCallback``)."""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package
    from pytorch_lightning import Callback

from .callbacks import _Bridge

__all__ = ["TelemetryLightningCallback"]


class TelemetryLightningCallback(Callback):
    """Log gradspace's live subspace statistics through the Lightning module's loggers.

    On ``on_train_start`` a :class:`~gradspace.diagnostics.Telemetry` is attached to the (first) optimizer; after
    each training batch the new rows go to ``pl_module.log_dict`` (on step, so at ``log_every_n_steps`` to every
    configured logger).

    Args:
        every: record a step row every ``every`` optimizer steps (default: the trainer's ``log_every_n_steps``).
        per_weight: one scalar per weight and field (``False``: only the means over the weights).
        prefix: first component of the logged names.
        **telemetry_options: more :class:`~gradspace.diagnostics.Telemetry` arguments.

    Example:
        >>> from gradspace.integrations.callbacks import TelemetryLightningCallback
        >>> # lightning.Trainer(callbacks=[TelemetryLightningCallback()], ...).fit(module)
    """

    def __init__(self, every: int | None = None, *, per_weight: bool = True, prefix: str = "gradspace",
                 **telemetry_options: Any) -> None:
        super().__init__()
        self.bridge = _Bridge(every, per_weight, prefix, telemetry_options)

    @property
    def telemetry(self) -> Any:
        """The attached :class:`~gradspace.diagnostics.Telemetry` (``None`` before training starts)."""
        return self.bridge.telemetry

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.optimizers:
            raise RuntimeError("TelemetryLightningCallback: the trainer has no optimizer.")
        self.bridge.attach(trainer.optimizers[0], pl_module, getattr(trainer, "log_every_n_steps", 1) or 1)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        metrics = self.bridge.metrics()
        if metrics:
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, logger=True, prog_bar=False)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.bridge.close()
