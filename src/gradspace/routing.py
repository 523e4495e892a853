"""Which weights get a subspace: ``param_groups(model, rank=...)``, the nanoGPT ``configure_optimizers`` idiom."""

from __future__ import annotations

import re
import statistics
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .frame import frame_of
from .registry import CORE_OPTIONS, OWNERS, check_unknown

_HEAD_NAMES = ("lm_head", "head", "classifier", "score")
#: the matrices of ``nn.MultiheadAttention`` that are parameters of the attention module itself (its ``out_proj`` is
#: an ``nn.Linear`` child): the packed QKV ``in_proj_weight``, or separate q/k/v when ``kdim``/``vdim`` differ
_MHA_MATRICES = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
#: torch's own blocks: a Linear inside one is never a model's output layer
_BLOCKS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.MultiheadAttention)
#: core options that only mean something for a projected weight; the others (``weight_decay``, ``maximize``, the
#: rule's options, ...) reach every group
_SUBSPACE_CORE = frozenset({"projector", "residual", "on_refresh", "rank", "refresh_every", "refresh", "refresh_threshold",
                            "refresh_min_gap", "side", "scale", "seed", "projector_sync", "verify_sync"})
_EMBEDDING_NAME = re.compile(r"(^|\.)(wte|wpe|tok_embeddings|embed_tokens|embed_positions|embeddings?|embed)(\.|$)")


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """A pattern matches a module name when it equals its last component (``"lm_head"`` matches ``model.lm_head`` but
    not ``multihead_proj``) or, as a regex, matches the whole name (``r".*attn.*"``)."""
    last = name.rsplit(".", 1)[-1]
    return any(last == p or re.fullmatch(p, name) for p in patterns)


def _subspace_only(key: str) -> bool:
    """Whether option ``key`` applies only to projected weights (a subspace core option, or declared only by
    projectors/residuals)."""
    if key in _SUBSPACE_CORE:
        return True
    owners = OWNERS.get(key, [])
    return key not in CORE_OPTIONS and bool(owners) and all(o.startswith(("projector", "residual")) for o in owners)


def _split_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options that the full-space group gets too."""
    return {k: v for k, v in options.items() if not _subspace_only(k)}


def _ranges(values: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2,5"``."""
    values = sorted(set(values))
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def compact_names(names: Sequence[str]) -> str:
    """Every name, with numbered blocks folded: ``layers.0.norm.weight, layers.1.norm.weight`` → ``layers.{0-1}.norm.weight``.

    Three or more names that differ only in their numeric components are written once, each varying index as a
    range, when they form the full grid of those indices (otherwise they are listed one by one). Templates appear in
    the order of their first name.

    Args:
        names: parameter or module names.

    Examples:
        >>> compact_names(["h.0.attn.weight", "h.1.attn.weight", "h.2.attn.weight", "h.0.mlp.weight", "ln_f.bias"])
        'h.{0-2}.attn.weight, h.0.mlp.weight, ln_f.bias'
    """
    templates: dict[tuple[str, ...], list[tuple[int, ...]]] = {}
    for name in names:
        parts = name.split(".")
        key = tuple("#" if p.isdigit() else p for p in parts)
        templates.setdefault(key, []).append(tuple(int(p) for p in parts if p.isdigit()))
    out = []
    for key, idx in templates.items():
        slots = [sorted({i[j] for i in idx}) for j in range(len(idx[0]))]
        grid = 1
        for values in slots:
            grid *= len(values)
        if len(idx) > 2 and grid == len(set(idx)):
            rows = [[str(v[0]) if len(v) == 1 else f"{{{_ranges(v)}}}" for v in slots]]
        else:
            rows = [[str(v) for v in i] for i in idx]
        for row in rows:
            it = iter(row)
            out.append(".".join(next(it) if p == "#" else p for p in key))
    return ", ".join(out)


def _head_shaped(shapes: Sequence[tuple[int, ...]]) -> list[bool]:
    """Which 2-D shapes look like a vocabulary embedding or output head.

    The rule: the longer side is at least 1000 and either at least 8× the shorter side (GPT-2's 50257 × 768), or it
    is at least 3× the shorter side, the longest side of all the 2-D shapes given and at least 2× the next longest
    (the largest matrices: LLaMA-7B's 32000 × 4096 against its 11008 × 4096 MLP). Tensors that are not 2-D never are.
    
    """
    longs = sorted({max(s) for s in shapes if len(s) == 2})
    top = longs[-1] if longs else 0
    second = longs[-2] if len(longs) > 1 else 0
    return [len(s) == 2 and max(s) >= 1000 and (max(s) >= 8 * min(s) or (
        max(s) >= 3 * min(s) and max(s) == top and second > 0 and top >= 2 * second)) for s in shapes]


def _ranks(sub: list[tuple[str, torch.Tensor]], rank: int | float, side: str) -> dict[int, list[str]]:
    """Effective rank → names, as the optimizer will use them (fractions resolved, ranks clamped to the matrix)."""
    by_rank: dict[int, list[str]] = {}
    for name, p in sub:
        try:
            r = frame_of(p.shape, {"projector": "svd", "side": side, "rank": rank}).rank
        except (KeyError, ValueError, TypeError):  # an invalid side/rank is reported by the optimizer itself
            r = rank  # type: ignore[assignment]
        by_rank.setdefault(r, []).append(name)
    return by_rank


def _report(sub: list[tuple[str, torch.Tensor]], full: list[tuple[str, torch.Tensor]], rank: int | float,
            side: str, where: str = "gradspace.param_groups") -> str:
    n_sub = sum(p.numel() for _, p in sub)
    n_all = n_sub + sum(p.numel() for _, p in full)
    asked = f"rank={rank!r} of each projected side" if isinstance(rank, float) else f"rank={rank!r}"
    lines = [f"{where}: {len(sub)} weight(s) get a subspace, {asked} ({n_sub:,} of {n_all:,} parameters)"
             + (":" if sub else ".")]
    lines += [f"  rank {r}: {compact_names(names)}" for r, names in sorted(_ranks(sub, rank, side).items())]
    lines.append(f"{where}: {len(full)} tensor(s) stay in full space" + (f": {compact_names([n for n, _ in full])}"
                                                                        if full else "."))
    return "\n".join(lines)


def _check_patterns(patterns: Sequence[str], arg: str) -> None:
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"{arg}: every pattern must be a string (a module name or regex), got {p!r}.")
        try:
            re.compile(p)
        except re.error as err:
            raise ValueError(f"{arg}: pattern {p!r} is not a valid regular expression ({err}).") from None


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

    The matrices a target selects: the 2-D weights of ``nn.Linear`` and the attention matrices of
    ``nn.MultiheadAttention`` (its packed QKV ``in_proj_weight``, or ``q/k/v_proj_weight``; its ``out_proj`` is a
    Linear) — so ``nn.TransformerEncoderLayer``/``DecoderLayer`` are projected whole.

    Args:
        model: the module to optimize.
        rank: int ≥ 1, or a float in (0, 1) (fraction of each weight's projected side).
        target: ``"linear"`` (default: the Linear and attention matrices above), ``"matrices"`` (those plus conv
            kernels, viewed as ``(out, in·k…)``), or a list of regexes searched within module and parameter names
            (``["attn", "mlp"]`` as GaLore's scripts; ``["in_proj"]`` selects attention's ``in_proj_weight``) whose
            ≥ 2-D parameters are projected. A pattern that selects no weight raises ``ValueError``.
        exclude: names never projected: a last name component (``"lm_head"``) or a regex matching the whole module or
            parameter name; by default output heads (``lm_head``, ``head``, ``classifier``, ``score``).
        exclude_last_linear: also keep the last ``nn.Linear`` of the model (its output layer) in full space. A Linear
            inside torch's Transformer layers or attention is never taken for an output layer.
        verbose: print what was chosen: each weight's actual rank, and every full-space name (numbered blocks folded).
        **options: any :class:`~gradspace.SubspaceOptimizer` option. Options that only concern a projected weight
            (``projector``, ``residual``, ``refresh_every``, ``scale``, ``side``, ``seed``, the projector's and
            residual's own options, ...) go to the subspace group; all others (``lr``, ``weight_decay``,
            ``maximize``, the rule's options such as ``betas``) go to every group.

    Embeddings and weights tied to an embedding are never projected. Returns groups of ``(name, tensor)`` pairs, so
    the optimizer knows parameter names (used in errors, ``state_bytes(per_param=True)`` and checkpoints).

    Examples:
        >>> import torch, gradspace
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.Linear(64, 4))
        >>> groups = gradspace.param_groups(model, rank=8, weight_decay=0.1)
        gradspace.param_groups: 2 weight(s) get a subspace, rank=8 (5,120 of 5,508 parameters):
          rank 8: 0.weight, 2.weight
        gradspace.param_groups: 4 tensor(s) stay in full space: {0,2-3}.bias, 3.weight
        >>> [n for n, _ in groups[0]["params"]], groups[1]["weight_decay"]
        (['0.weight', '2.weight'], 0.1)
    """
    check_unknown(options, "param_groups")
    if isinstance(target, str):
        if target not in ("linear", "all-linear", "matrices"):
            raise ValueError(f"param_groups: target={target!r} must be 'linear', 'matrices' or a list of module-name "
                             f"regexes (e.g. target=[{target!r}]).")
    else:
        target = list(target)
        _check_patterns(target, "param_groups: target")
    exclude = list(exclude)
    _check_patterns(exclude, "param_groups: exclude")
    embeddings = [m.weight for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    embedding_ids = {id(w) for w in embeddings}
    # storage pointers catch ties through distinct Parameter objects; meta tensors all have pointer 0, so skip them
    embedding_ptrs = {w.data_ptr() for w in embeddings if not w.is_meta and w.data_ptr() != 0}
    blocks = [name for name, m in model.named_modules() if isinstance(m, _BLOCKS)]
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)
               and not any(b == "" or name.startswith(b + ".") for b in blocks)]
    last_linear = linears[-1] if exclude_last_linear and linears else None

    # every >= 2-D trainable parameter, with its module's name and kind
    candidates: list[tuple[str, str, str, nn.Parameter]] = []
    seen_ids: set[int] = set()
    for mod_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() < 2 or not p.requires_grad or id(p) in seen_ids:
                continue
            seen_ids.add(id(p))
            if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
                kind = "embedding"
            elif isinstance(module, nn.Linear) and pname == "weight":
                kind = "linear"
            elif isinstance(module, nn.MultiheadAttention) and pname in _MHA_MATRICES:
                kind = "linear"
            elif isinstance(module, nn.modules.conv._ConvNd) and pname == "weight":
                kind = "conv"
            else:
                kind = "other"
            full_name = f"{mod_name}.{pname}" if mod_name else pname
            candidates.append((mod_name, full_name, kind, p))

    if isinstance(target, str):
        kinds = ("linear",) if target in ("linear", "all-linear") else ("linear", "conv")
        selected = [c for c in candidates if c[2] in kinds]
    else:
        searchable = [c for c in candidates if c[2] != "embedding"]
        for pattern in target:
            if not any(re.search(pattern, m) or re.search(pattern, f) for m, f, _, _ in searchable):
                names = [f for _, f, _, _ in searchable]
                raise ValueError(
                    f"param_groups: target pattern {pattern!r} selects no weight (patterns are searched within module "
                    f"and parameter names of >= 2-D, non-embedding parameters). "
                    + (f"Candidates ({len(names)}): {compact_names(names[:40])}{', ...' if len(names) > 40 else ''}."
                       if names else "The model has no such parameter.")
                )
        selected = [c for c in searchable if any(re.search(p, c[0]) or re.search(p, c[1]) for p in target)]

    chosen: set[int] = set()
    for mod_name, full_name, _, p in selected:
        tied = id(p) in embedding_ids or (not p.is_meta and p.data_ptr() in embedding_ptrs)
        if _matches(mod_name, exclude) or _matches(full_name, exclude) or (mod_name == last_linear and mod_name) or tied:
            continue
        chosen.add(id(p))

    sub, full, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (sub if id(p) in chosen else full).append((name, p))
    if verbose:
        print(_report(sub, full, rank, options.get("side", "smaller")))
    groups: list[dict[str, Any]] = []
    if sub:
        groups.append({"params": sub, "rank": rank, **options})
    if full:
        groups.append({"params": full, **_split_options(options), "projector": "identity"})
    if not groups:
        raise ValueError("param_groups: the model has no trainable parameters.")
    return groups


def _named_pairs(params: Any) -> list[tuple[str, torch.Tensor]] | None:
    """``params`` as a list of ``(name, tensor)`` pairs, or ``None`` if it is not one."""
    if isinstance(params, (torch.Tensor, dict, str)) or not isinstance(params, Iterable):
        return None
    items = list(params)
    if items and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) and isinstance(x[1], torch.Tensor)
                     for x in items):
        return items
    return None


def resolve_params(
    params: Any,
    *,
    rank: int | float | None,
    caller: str,
    verbose: bool = True,
) -> list[dict[str, Any]] | None:
    """Route what an optimizer constructor was given: a module or named parameters → ``param_groups``-style groups.

    * an ``nn.Module``: ``param_groups(params, rank=rank)`` (``rank=None``: 128, the optimizer's default);
    * an iterable of ``(name, tensor)`` pairs (``model.named_parameters()``): the same routing by name and shape:
      2-D tensors are projected except embeddings (``wte``, ``embed_tokens``, ``*.embedding`` ...), heads named as
      ``param_groups``' ``exclude`` default, embedding-/head-shaped tensors (the rule below) and the last 2-D weight
      (the output layer);
    * anything else (bare tensors, param-group dicts): ``None`` — the caller uses ``params`` as given. Bare tensors
      with a ``rank`` would project every matrix, so a ``UserWarning`` names the embedding-/head-shaped ones.

    Embedding-/head-shaped: a 2-D tensor whose longer side is ≥ 1000 and either ≥ 8× its shorter side (GPT-2's
    50257 × 768), or ≥ 3× its shorter side, the longest of all the 2-D tensors given and ≥ 2× the next longest (the
    largest matrices: LLaMA-7B's 32000 × 4096 against its 11008 × 4096 MLP). Named parameters are routed by name and
    the 8× clause only (a warning may guess; routing should not).

    ``params`` is iterated: a caller that falls back to ``params`` on ``None`` passes a list (``params if
    isinstance(params, nn.Module) else list(params)``).

    Args:
        params: what the user passed as ``params``.
        rank: the constructor's ``rank`` (``None``: none given).
        caller: the optimizer's name, for messages (``"GaLoreAdamW"``).
        verbose: print the routing as ``param_groups`` does.

    Example:
        >>> import torch, warnings
        >>> from gradspace.routing import resolve_params
        >>> model = torch.nn.Sequential(torch.nn.Embedding(5000, 64), torch.nn.Linear(64, 64), torch.nn.Linear(64, 5000))
        >>> [n for n, _ in resolve_params(model, rank=8, caller="GaLoreAdamW", verbose=False)[0]["params"]]
        ['1.weight']
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     resolve_params(list(model.parameters()), rank=8, caller="GaLoreAdamW")
        >>> "tensor 0 (5000, 64)" in str(w[0].message)
        True
    """
    if isinstance(params, nn.Module):
        return param_groups(params, rank=128 if rank is None else rank, verbose=verbose)
    if isinstance(params, (torch.Tensor, dict)) or not isinstance(params, Iterable):
        return None
    items = list(params) if not isinstance(params, (list, tuple)) else params
    if not items or any(isinstance(x, dict) for x in items):
        return None
    pairs = _named_pairs(items)
    if pairs is None:
        tensors = [x for x in items if isinstance(x, torch.Tensor)]
        if rank is not None and tensors:
            shaped = _head_shaped([tuple(t.shape) for t in tensors])
            named = [f"tensor {i} {tuple(t.shape)}" for i, (t, s) in enumerate(zip(tensors, shaped)) if s]
            if named:
                warnings.warn(
                    f"{caller}: bare parameters with rank={rank!r} project every matrix, including the embedding-/"
                    f"head-shaped {', '.join(named)}; GaLore-style methods keep those in full space. Pass the model "
                    f"(or model.named_parameters()) to route it, or groups from gradspace.param_groups(model, "
                    f"rank={rank!r}).",
                    UserWarning,
                    stacklevel=3,
                )
        return None
    if rank is None:
        rank = 128
    trainable = [(n, p) for n, p in pairs if p.requires_grad]
    shaped = [p.dim() == 2 and max(p.shape) >= 1000 and max(p.shape) >= 8 * min(p.shape) for _, p in trainable]
    matrices = [i for i, (_, p) in enumerate(trainable) if p.dim() == 2]
    last = matrices[-1] if matrices else None
    sub, full = [], []
    for i, ((name, p), head) in enumerate(zip(trainable, shaped)):
        module = name.rsplit(".", 1)[0] if "." in name else ""
        keep_full = (p.dim() != 2 or head or i == last or bool(_EMBEDDING_NAME.search(name))
                     or _matches(module, _HEAD_NAMES) or _matches(name, _HEAD_NAMES))
        (full if keep_full else sub).append((name, p))
    if verbose:
        print(_report(sub, full, rank, "smaller", where=f"{caller} (named parameters)"))
    groups: list[dict[str, Any]] = []
    if sub:
        groups.append({"params": sub, "rank": rank})
    if full:
        groups.append({"params": full, "projector": "identity"})
    return groups
