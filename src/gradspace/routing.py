"""Which weights get a subspace: ``param_groups(model, rank=...)``, the nanoGPT ``configure_optimizers`` idiom."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .registry import check_unknown

_HEAD_NAMES = ("lm_head", "head", "classifier", "score")


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """A pattern matches a module name when it equals its last component (``"lm_head"`` matches ``model.lm_head`` but
    not ``multihead_proj``) or, as a regex, matches the whole name (``r".*attn.*"``)."""
    last = name.rsplit(".", 1)[-1]
    return any(last == p or re.fullmatch(p, name) for p in patterns)


def param_groups(
    model: nn.Module,
    rank: int | float = 128,
    *,
    target: str | Sequence[str] = "linear",
    exclude: Sequence[str] = _HEAD_NAMES,
    exclude_last_linear: bool = True,
    verbose: bool = True,
    **options: Any,
) -> list[dict[str, Any]]:
    """Split ``model``'s parameters into a subspace group (``rank`` + ``options``) and a full-space group.

    Args:
        model: the module to optimize.
        rank: int ≥ 1, or a float in (0, 1) (fraction of each weight's projected side).
        target: ``"linear"`` (default: 2-D weights of ``nn.Linear``), ``"matrices"`` (every ≥ 2-D weight of
            ``nn.Linear``/conv layers, conv kernels viewed as ``(out, in·k…)``), or a list of regexes over module
            names (``["attn", "mlp"]`` as GaLore's scripts) whose ≥ 2-D weights are projected.
        exclude: module names never projected: a last name component (``"lm_head"``) or a regex matching the whole
            name; by default output heads (``lm_head``, ``head``, ``classifier``, ``score``).
        exclude_last_linear: also keep the last ``nn.Linear`` of the model (its output layer) in full space.
        verbose: print what was chosen.
        **options: any :class:`~gradspace.SubspaceOptimizer` option for the subspace group (``refresh_every``,
            ``projector``, …).

    ``target`` regexes are searched within module names (``"attn"`` selects ``layers.0.self_attn.q_proj``).

    Embeddings and weights tied to an embedding are never projected. Returns groups of ``(name, tensor)`` pairs, so
    the optimizer knows parameter names (used in errors, ``state_bytes(per_param=True)`` and checkpoints).

    Examples:
        >>> import torch, gradspace
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.Linear(64, 4))
        >>> groups = gradspace.param_groups(model, rank=8, verbose=False)
        >>> [n for n, _ in groups[0]["params"]]
        ['0.weight', '2.weight']
    """
    check_unknown(options, "param_groups")
    if isinstance(target, str) and target not in ("linear", "all-linear", "matrices"):
        raise ValueError(f"target={target!r} must be 'linear', 'matrices' or a list of module-name regexes.")
    embeddings = [m.weight for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    embedding_ids = {id(w) for w in embeddings}
    # storage pointers catch ties through distinct Parameter objects; meta tensors all have pointer 0, so skip them
    embedding_ptrs = {w.data_ptr() for w in embeddings if not w.is_meta and w.data_ptr() != 0}
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    last_linear = linears[-1] if exclude_last_linear and linears else None

    chosen: dict[int, str] = {}
    for mod_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() < 2 or not weight.requires_grad:
            continue
        if isinstance(target, str):
            kinds = (nn.Linear,) if target in ("linear", "all-linear") else (nn.Linear, nn.modules.conv._ConvNd)
            if not isinstance(module, kinds):
                continue
        elif not any(re.search(p, mod_name) for p in target) or isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            continue
        tied = id(weight) in embedding_ids or (not weight.is_meta and weight.data_ptr() in embedding_ptrs)
        if _matches(mod_name, exclude) or mod_name == last_linear or tied:
            continue
        chosen[id(weight)] = f"{mod_name}.weight" if mod_name else "weight"

    sub, full, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (sub if id(p) in chosen else full).append((name, p))
    if verbose:
        n_sub = sum(p.numel() for _, p in sub)
        n_all = n_sub + sum(p.numel() for _, p in full)
        print(
            f"gradspace.param_groups: {len(sub)} weight(s) get a rank-{rank} subspace "
            f"({n_sub:,} of {n_all:,} parameters): {', '.join(n for n, _ in sub[:6])}{' …' if len(sub) > 6 else ''}"
        )
        print(
            f"gradspace.param_groups: {len(full)} tensor(s) stay in full space: "
            f"{', '.join(n for n, _ in full[:6])}{' …' if len(full) > 6 else ''}"
        )
    groups: list[dict[str, Any]] = []
    if sub:
        groups.append({"params": sub, "rank": rank, **options})
    if full:
        groups.append({"params": full, "projector": "identity"})
    if not groups:
        raise ValueError("param_groups: the model has no trainable parameters.")
    return groups
