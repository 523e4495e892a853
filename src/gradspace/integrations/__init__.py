"""Glue for training frameworks. Importing this package imports nothing heavy.

* :mod:`gradspace.integrations.hf` — Hugging Face ``transformers.Trainer``: :func:`~gradspace.integrations.hf.create_optimizer`
  builds a gradspace optimizer from ``TrainingArguments`` for ``Trainer(optimizers=(opt, None))``, and
  ``GradspaceTrainer`` does the same inside ``Trainer.create_optimizer`` (``pip install -e ".[hf]"`` from a checkout).

Lightning needs no glue: return a gradspace optimizer from ``LightningModule.configure_optimizers``
(``examples/lightning_example.py``). DDP needs none either: the optimizer uses the default process group
(``examples/ddp_cpu.py``).
"""

__all__ = ["hf"]
