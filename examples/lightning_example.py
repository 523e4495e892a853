"""PyTorch Lightning with a gradspace optimizer: ``configure_optimizers`` returns it, like any torch optimizer.

No glue is needed: Lightning steps, zero-grads, schedules and checkpoints the optimizer through the standard
``torch.optim.Optimizer`` API, and gradspace's state is plain tensors and ints, so a ``.ckpt`` resumes exactly.

This script trains a small MLP on CPU, saves a checkpoint at the end of the first epoch (mid refresh period), resumes
from it in a fresh LightningModule and checks that the resumed weights equal the uninterrupted run's bitwise.

Run::

    pip install lightning            # (gradspace does not depend on it)
    python examples/lightning_example.py --quick       # 2 epochs × 4 steps, a few seconds after imports
    python examples/lightning_example.py --epochs 30   # longer; prints the loss going down
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

import gradspace

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
except ImportError:  # pragma: no cover
    sys.exit("examples/lightning_example.py needs Lightning: pip install lightning")

BATCHES_PER_EPOCH, BATCH, REFRESH = 4, 32, 3  # refreshes at steps 0, 3, 6, …: the epoch-1 checkpoint (step 4) is mid-period


class Regressor(pl.LightningModule):
    """A 3-layer MLP; the hidden weights get a rank-8 Fira subspace, the output layer and biases stay full."""

    def __init__(self, lr: float = 3e-3, rank: int = 8, total_steps: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64),
                                       torch.nn.GELU(), torch.nn.Linear(64, 8))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        if self.global_step == 0:
            self.first_loss = float(loss.detach())
        self.log("loss", loss, prog_bar=False)
        return loss

    def configure_optimizers(self) -> dict:
        groups = gradspace.param_groups(self.net, rank=self.hparams.rank, verbose=False)  # Linear weights → subspace
        opt = gradspace.Fira(groups, lr=self.hparams.lr, update_proj_gap=REFRESH, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.hparams.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCHES_PER_EPOCH * BATCH, 32, generator=g)
    y = torch.tanh(x @ torch.randn(32, 8, generator=g))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def fit(epochs: int, ckpt_dir: str | None = None, resume: str | None = None) -> tuple[Regressor, pl.Trainer]:
    torch.manual_seed(0)
    module = Regressor(total_steps=epochs * BATCHES_PER_EPOCH)
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, every_n_epochs=1, save_top_k=-1, save_on_train_epoch_end=True,
                                 filename="{epoch}")] if ckpt_dir else []
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=bool(ckpt_dir), callbacks=callbacks,
                         deterministic=True)
    trainer.fit(module, data(), ckpt_path=resume)
    return module, trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs (8 steps)")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    epochs = 2 if args.quick else args.epochs
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        full, trainer = fit(epochs, ckpt_dir=tmp)
        opt = trainer.optimizers[0]
        hidden = full.net[0].weight
        print(f"optimizer: {type(opt).__name__}; state of net.0.weight: {sorted(opt.state[hidden])}")
        print(f"step {trainer.global_step}: loss {full.first_loss:.4f} -> {float(trainer.callback_metrics['loss']):.4f}, "
              f"basis {tuple(opt.state[hidden]['proj.basis'].shape)}, refreshes {opt.state[hidden]['proj.count']}")
        ckpt = os.path.join(tmp, "epoch=0.ckpt")
        saved = torch.load(ckpt, weights_only=True)  # tensor-only optimizer state: no unpickling of code
        print(f"checkpoint {os.path.basename(ckpt)}: global_step {saved['global_step']}, optimizer state loads with "
              "weights_only=True")
        resumed, trainer2 = fit(epochs, resume=ckpt)
    same = all(torch.equal(a, b) for a, b in zip(full.parameters(), resumed.parameters()))
    print(f"resumed from step {BATCHES_PER_EPOCH} (mid refresh period) to step {trainer2.global_step}: "
          f"weights equal the uninterrupted run bitwise: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
