"""Telemetry bridges: the Trainer callback feeds the Trainer's logs (and report_to backends when first in line), the
Lightning callback feeds the module's loggers; both log the newest Telemetry row of every weight."""

from __future__ import annotations

import math

import pytest
import torch

import gradspace
from gradspace.diagnostics import FIELDS
from gradspace.integrations.callbacks import REFRESH_FIELDS, STEP_FIELDS, latest_metrics


def test_latest_metrics_reports_each_row_once_and_means():
    rows = [{"step": 0, "param": "a", "kind": "step", "energy": 0.5, "grad_erank": float("nan")},
            {"step": 0, "param": "a", "kind": "refresh", "overlap": 0.25, "angle_max_deg": 80.0},
            {"step": 0, "param": "b", "kind": "step", "energy": 1.0},
            {"step": 2, "param": "a", "kind": "step", "energy": 0.7}]
    seen: dict = {}
    out = latest_metrics(rows, after=seen)
    assert out == {"gradspace/a/energy": 0.7, "gradspace/a/overlap": 0.25, "gradspace/a/angle_max_deg": 80.0,
                   "gradspace/b/energy": 1.0, "gradspace/energy_mean": pytest.approx(0.85),
                   "gradspace/overlap_mean": 0.25, "gradspace/angle_max_deg_mean": 80.0, "gradspace/refreshes": 1.0}
    assert latest_metrics(rows, after=seen) == {}  # nothing new
    rows.append({"step": 4, "param": "b", "kind": "step", "energy": 0.9})
    assert latest_metrics(rows, after=seen, per_weight=False) == {"gradspace/energy_mean": 0.9,
                                                                  "gradspace/refreshes": 0.0}
    assert set(STEP_FIELDS) | set(REFRESH_FIELDS) <= set(FIELDS)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32),
                                        torch.nn.Tanh())
        self.head = torch.nn.Linear(32, 4)

    def forward(self, x, labels=None):
        logits = self.head(self.body(x))
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


class _Data(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)

    def __len__(self):
        return 64

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def _optimizer(model):
    return gradspace.GaLoreAdamW(gradspace.param_groups(model, rank=4, verbose=False), lr=1e-2, update_proj_gap=3)


def test_trainer_callback_logs_through_the_trainer_and_report_to_order(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from gradspace.integrations.callbacks import TelemetryTrainerCallback, add_telemetry_callback

    class Backend(transformers.TrainerCallback):  # stands for a report_to integration: sees logs as passed
        def __init__(self):
            self.logs = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs))

    model = _Net()
    backend = Backend()
    args = transformers.TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], max_steps=6, logging_steps=2,
                                          per_device_train_batch_size=8, save_strategy="no", disable_tqdm=True,
                                          dataloader_num_workers=0, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Data(), optimizers=(_optimizer(model), None),
                                   callbacks=[backend])
    callback = add_telemetry_callback(trainer, spectra_every=2)
    assert isinstance(callback, TelemetryTrainerCallback) and trainer.callback_handler.callbacks[0] is callback
    trainer.train()
    train_logs = [log for log in backend.logs if "loss" in log]
    assert len(train_logs) == 3
    first, last = train_logs[0], train_logs[-1]
    # the routed weights by name, captured energy in (0, 1], a refresh at step 0 with NaN overlap left out
    assert 0.0 < first["gradspace/body.0.weight/energy"] <= 1.0 + 1e-6
    assert {"gradspace/body.2.weight/energy", "gradspace/energy_mean", "gradspace/refreshes"} <= set(first)
    assert first["gradspace/head.weight/energy"] == 1.0  # the output layer runs in full space: all of it captured
    assert first["gradspace/refreshes"] == 2.0 and "gradspace/body.0.weight/overlap" not in first  # first bases
    assert all(math.isfinite(v) for k, v in first.items() if k.startswith("gradspace/"))
    assert 0.0 <= train_logs[1]["gradspace/body.0.weight/overlap"] <= 1.0  # the refresh at step 3 compared two bases
    assert "gradspace/body.0.weight/overlap" not in last  # each row is logged once
    assert "gradspace/body.0.weight/grad_erank" in last
    # the same numbers reach log_history (trainer_state.json)
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert history[-1]["gradspace/energy_mean"] == last["gradspace/energy_mean"]
    assert callback.telemetry is not None and callback.telemetry._handles == []  # closed at the end of training


def test_lightning_callback_logs_to_the_module_loggers(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import Logger

    from gradspace.integrations.callbacks import TelemetryLightningCallback

    class Recorder(Logger):
        def __init__(self):
            super().__init__()
            self.rows = []

        name, version = "recorder", 0

        def log_hyperparams(self, params, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.rows.append((step, dict(metrics)))

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _Net()

        def training_step(self, batch, batch_idx):
            return self.net(batch["x"], batch["labels"])["loss"]

        def configure_optimizers(self):
            return _optimizer(self.net)

    logger = Recorder()
    callback = TelemetryLightningCallback(every=1)
    trainer = L.Trainer(max_steps=4, log_every_n_steps=2, logger=logger, callbacks=[callback], accelerator="cpu",
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))
    trainer.fit(Module(), torch.utils.data.DataLoader(_Data(), batch_size=8))
    logged = [m for _, m in logger.rows if any(k.startswith("gradspace/") for k in m)]
    assert len(logged) == 2  # steps 2 and 4
    # parameter names come from the LightningModule (net.body.0.weight)
    assert all(0.0 < m["gradspace/net.body.0.weight/energy"] <= 1.0 + 1e-6 for m in logged)
    assert callback.telemetry.calls == 4
