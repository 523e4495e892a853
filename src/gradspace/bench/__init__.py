"""Benchmarks and memory planning: ``gradspace bench`` and ``gradspace memory``.

* :mod:`~gradspace.bench.cli` — train the same model with several optimizers on real data and measure validation loss,
  exact optimizer-state bytes, step time, throughput and peak memory (``run_benchmark``);
* :mod:`~gradspace.bench.memory` — exact weight/gradient/state bytes of any model and optimizer, planned on the meta
  device (``plan_memory``, ``plan_state``);
* :mod:`~gradspace.bench.model` — the small LLaMA-style decoder and the LLaMA 60M…7B shape configs;
* :mod:`~gradspace.bench.data` — corpus resolution (tiny-shakespeare, offline fallback) and fixed batches;
* :mod:`~gradspace.bench.sweep` — the standard mode's lr grid and its extension at the edges;
* :mod:`~gradspace.bench.stats` — paired per-seed t intervals, verdicts and the targets.

Optional dependencies (tqdm, matplotlib, scikit-learn, PyYAML, the peer libraries) are imported only where used.
"""

from .memory import plan_memory, plan_state
from .optimizers import BUILTINS, build_optimizer, measure_state_bytes

__all__ = ["plan_memory", "plan_state", "BUILTINS", "build_optimizer", "measure_state_bytes"]
