"""Optimizer specifications for the benchmark: named built-in configurations, YAML/JSON files, and construction.

A specification (one entry of a ``--config`` file, or a built-in name) is a dict::

    name: gs-fira                 # label in the tables
    optimizer: gradspace.Fira     # torch.optim.X | gradspace.<Preset> | gradspace.SubspaceOptimizer | peer "module.Class"
    lr: 0.01                      # one lr for every group (the anchors' convention) …
    lr_grid: [0.003, 0.01]        # … or its own grid for ``--lr-sweep`` (default: ``--lr-grid``, the same for all)
    kwargs: {weight_decay: 0.0}   # constructor keyword arguments
    group: {rank: auto, update_proj_gap: auto, alpha: 0.25}   # options of the low-rank group
    lowrank_lr_scale: 0.25        # (optional) lr multiplier of the low-rank group, for lr-allocation controls

``auto`` resolves per task: ``rank`` → ¼ of each routed weight's smaller side (``hidden/4`` in the LM task; one group
per distinct rank), ``update_proj_gap``/``update_gap``/``refresh_every``/``kappa`` → a third of the run's steps (three
refreshes per run, as 100 of 300 in peers-measured.md). The routed ("low-rank") weights are the GaLore scripts' choice:
the 2-D weights of ``nn.Linear`` modules whose name contains ``attn`` or ``mlp``; embeddings, norms and the head stay in a
plain full-space group of the same optimizer, at the same lr.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..functional import matrix_shape

AUTO = "auto"
_GAP_KEYS = ("update_proj_gap", "update_gap", "refresh_every", "kappa")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}

#: Named configurations. Peers use their README hyper-parameters (peers-measured.md); every gradspace preset gets the
#: same lr and scale as the peer it reproduces, so the pair differs only by implementation.
BUILTINS: dict[str, dict[str, Any]] = {
    "adamw": {"optimizer": "torch.optim.AdamW", "lr": 1e-3,
              "kwargs": {"weight_decay": 0.0}, "note": "torch.optim.AdamW (foreach), one lr for all params"},
    "adamw-fused": {"optimizer": "torch.optim.AdamW", "lr": 1e-3, "kwargs": {"weight_decay": 0.0, "fused": True},
                    "note": "torch.optim.AdamW(fused=True), the fastest CPU AdamW"},
    "adamw-lrsplit": {"optimizer": "torch.optim.AdamW", "lr": 1e-2, "lowrank_lr_scale": 0.25,
                      "kwargs": {"weight_decay": 0.0},
                      "note": "AdamW with per-group lrs: attn/mlp matrices at lr·0.25, embeddings/head/norms at lr (the "
                              "low-rank methods' allocation at scale 0.25); lr swept like every method"},
    "galore": {"optimizer": "galore_torch.GaLoreAdamW", "lr": 1e-2,
               "kwargs": {"weight_decay": 0.0, "no_deprecation_warning": True},
               "group": {"rank": AUTO, "update_proj_gap": AUTO, "scale": 0.25, "proj_type": "std"},
               "note": "galore-torch 1.0 (peer)"},
    "fira": {"optimizer": "fira.FiraAdamW", "lr": 1e-2, "kwargs": {"weight_decay": 0.0, "no_deprecation_warning": True},
             "group": {"rank": AUTO, "update_proj_gap": AUTO, "alpha": 0.25, "proj_type": "std"},
             "note": "fira 1.0.2 (peer)"},
    "apollo": {"optimizer": "apollo_torch.APOLLOAdamW", "lr": 1e-2, "kwargs": {"weight_decay": 0.0},
               "group": {"rank": AUTO, "proj": "random", "scale_type": "channel", "scale": 1.0,
                         "update_proj_gap": AUTO, "proj_type": "std"},
               "note": "apollo-torch 1.0.3 (peer)"},
    "apollo-mini": {"optimizer": "apollo_torch.APOLLOAdamW", "lr": 1e-2, "kwargs": {"weight_decay": 0.0, "scale_front": True},
                    "group": {"rank": 1, "proj": "random", "scale_type": "tensor", "scale": 128.0,
                              "update_proj_gap": AUTO, "proj_type": "std"},
                    "note": "apollo-torch 1.0.3, APOLLO-Mini configuration (peer)"},
    "gs-galore": {"optimizer": "gradspace.GaLoreAdamW", "lr": 1e-2, "kwargs": {"weight_decay": 0.0},
                  "group": {"rank": AUTO, "update_proj_gap": AUTO, "scale": 0.25, "proj_type": "std"},
                  "note": "gradspace GaLoreAdamW preset (same hyper-parameters as galore)"},
    "gs-fira": {"optimizer": "gradspace.Fira", "lr": 1e-2, "kwargs": {"weight_decay": 0.0},
                "group": {"rank": AUTO, "update_proj_gap": AUTO, "alpha": 0.25, "proj_type": "std"},
                "note": "gradspace Fira preset (paper residual G − PPᵀG)"},
    "gs-apollo": {"optimizer": "gradspace.APOLLO", "lr": 1e-2, "kwargs": {"weight_decay": 0.0},
                  "group": {"rank": AUTO, "proj": "random", "scale_type": "channel", "scale": 1.0,
                            "update_proj_gap": AUTO, "proj_type": "std"},
                  "note": "gradspace APOLLO preset (random basis regenerated from a seed, not stored)"},
    "gs-apollo-mini": {"optimizer": "gradspace.APOLLOMini", "lr": 1e-2, "kwargs": {"weight_decay": 0.0},
                       "group": {"rank": 1, "update_proj_gap": AUTO},
                       "note": "gradspace APOLLOMini preset (rank 1, tensor scale, √128)"},
    "gs-fira-int8": {"optimizer": "gradspace.Fira", "lr": 1e-2,
                     "kwargs": {"weight_decay": 0.0, "state_dtype": "int8", "basis_dtype": "bfloat16"},
                     "group": {"rank": AUTO, "update_proj_gap": AUTO, "alpha": 0.25, "proj_type": "std"},
                     "note": "gradspace Fira with blockwise int8 moments (full-space ones too) and bf16 bases"},
    "gs-fira-bf16": {"optimizer": "gradspace.Fira", "lr": 1e-2,
                     "kwargs": {"weight_decay": 0.0, "state_dtype": "bfloat16"},
                     "group": {"rank": AUTO, "update_proj_gap": AUTO, "alpha": 0.25, "proj_type": "std"},
                     "note": "gradspace Fira with bf16 moments (bases stay fp32): the ≤ 25 %-state configuration, "
                             "chosen among 5 candidates on dev seeds 100–101"},
    "gs-frugal-r1": {"optimizer": "gradspace.SubspaceOptimizer", "lr": 1e-2,
                     "kwargs": {"weight_decay": 0.0, "bias_correction": "hf", "eps": 1e-6},
                     "group": {"rank": 1, "projector": "random", "random_dist": "stiefel", "on_refresh": "reset",
                               "residual": "sign", "scale": 0.25, "residual_lr_scale": 0.25, "refresh_every": AUTO},
                     "note": "FRUGAL-like composition: Adam in a seeded rank-1 subspace (reset at refresh), signSGD at "
                             "lr·0.25 outside (state-free residual); chosen on dev seeds 100–101"},
    "gs-frugal": {"optimizer": "gradspace.FRUGAL", "lr": 1e-3, "kwargs": {"weight_decay": 0.0, "update_gap": AUTO},
                  "group": {"is_proj_params": True},
                  "note": "gradspace FRUGAL preset (density 0.25, SVD, Adam reset at refresh, signSGD outside)"},
    "gs-ldadam": {"optimizer": "gradspace.LDAdam", "lr": 1e-3, "kwargs": {"weight_decay": 0.0},
                  "group": {"rank": AUTO}, "note": "gradspace LDAdam preset"},
    "gs-sumo": {"optimizer": "gradspace.SUMO", "lr": 1e-2, "kwargs": {"weight_decay": 0.0},
                "group": {"rank": AUTO, "update_proj_gap": AUTO}, "note": "gradspace SUMO preset"},
    "gs-osd": {"optimizer": "gradspace.OnlineSubspaceAdamW", "lr": 1e-2, "kwargs": {"weight_decay": 0.0},
               "group": {"rank": AUTO, "update_proj_gap": AUTO, "scale": 0.25},
               "note": "gradspace Online Subspace Descent preset"},
    "gs-flora": {"optimizer": "gradspace.FloraAdam", "lr": 1e-3, "kwargs": {"weight_decay": 0.0},
                 "group": {"rank": AUTO, "kappa": AUTO}, "note": "gradspace FloraAdam preset"},
    "gs-golore": {"optimizer": "gradspace.GoLore", "lr": 1e-2, "kwargs": {"weight_decay": 0.0},
                  "group": {"rank": AUTO, "update_proj_gap": AUTO, "scale": 0.25},
                  "note": "gradspace GoLore preset (random subspaces from the start: no total_steps)"},
}


def is_peer(spec: Mapping[str, Any]) -> bool:
    return spec["family"] == "peer"


def _family(target: str) -> str:
    if target.startswith("torch."):
        return "torch"
    if target.startswith("gradspace"):
        return "gradspace"
    return "peer"


def normalize(spec: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    """Fill a specification's defaults and check its keys (unknown keys → ``ValueError`` naming the allowed ones)."""
    allowed = {"name", "optimizer", "lr", "lr_grid", "kwargs", "group", "lowrank_lr_scale", "note", "family"}
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"optimizer spec {name or spec.get('name')!r}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}.")
    if "optimizer" not in spec:
        raise ValueError(f"optimizer spec {name or spec.get('name')!r} has no 'optimizer' (e.g. torch.optim.AdamW, gradspace.Fira).")
    out = copy.deepcopy(dict(spec))
    out["name"] = str(name or out.get("name") or out["optimizer"])
    target = out["optimizer"]
    if target in ("gradspace", "SubspaceOptimizer"):
        target = "gradspace.SubspaceOptimizer"
    elif "." not in target:
        from ..presets import PRESETS

        if target in PRESETS:
            target = f"gradspace.{target}"
    out["optimizer"] = target
    out.setdefault("lr", 1e-3)
    out["lr"] = float(out["lr"])
    out["lr_grid"] = [float(x) for x in out.get("lr_grid") or []]
    out.setdefault("kwargs", {})
    out.setdefault("group", None)
    out.setdefault("lowrank_lr_scale", None)
    out.setdefault("note", "")
    out["family"] = _family(target)
    return out


#: how a preset named on the command line by its class name routes: the group that marks the attn/mlp weights
_PRESET_GROUPS: dict[str, dict[str, Any] | None] = {
    "APOLLOMini": {"rank": 1, "update_proj_gap": AUTO},
    "FRUGAL": {"is_proj_params": True},
    "LDAdam": {"rank": AUTO},
    "FloraAdam": {"rank": AUTO, "kappa": AUTO},
    "AdamP": None,
    "SGDP": None,
}


def builtin(name: str) -> dict[str, Any]:
    """A built-in configuration by name, or any gradspace preset by class name (``GaLoreAdamW``): its defaults, with
    ``auto`` rank and gap on the routed weights."""
    if name in BUILTINS:
        return normalize(BUILTINS[name], name)
    from ..presets import PRESETS

    lower = {k.lower(): k for k in PRESETS}
    if name.lower() in lower:
        cls = lower[name.lower()]
        group = _PRESET_GROUPS.get(cls, {"rank": AUTO, "update_proj_gap": AUTO})
        kwargs = {"update_gap": AUTO} if cls == "FRUGAL" else {}
        return normalize({"optimizer": f"gradspace.{cls}", "lr": 1e-3, "kwargs": kwargs, "group": group}, name)
    raise KeyError(f"unknown optimizer {name!r}; built-in names: {sorted(BUILTINS)}; gradspace presets: {sorted(PRESETS)}; "
                   "or describe it in a --config file.")


def parse_optimizer_arg(text: str) -> dict[str, Any]:
    """``NAME`` (built-in or preset) or ``NAME={json spec}`` from the command line."""
    if "=" in text and text.split("=", 1)[1].lstrip().startswith("{"):
        name, body = text.split("=", 1)
        return normalize(json.loads(body), name)
    return builtin(text)


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``; needs PyYAML) or JSON benchmark file: ``{optimizers: [spec|name, …], task…}``."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml  # lazy: only YAML configs need PyYAML

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if isinstance(data, list):
        data = {"optimizers": data}
    if not isinstance(data, dict) or "optimizers" not in data:
        raise ValueError(f"{path}: expected a mapping with an 'optimizers' list (or a bare list of specs).")
    specs = []
    for item in data["optimizers"]:
        if isinstance(item, str):
            specs.append(builtin(item))
        elif isinstance(item, dict) and set(item) == {"name"}:
            specs.append(builtin(item["name"]))
        else:
            if not isinstance(item, dict):
                raise ValueError(f"{path}: each optimizer is a name or a mapping, got {item!r}.")
            base_name = item.get("base")
            if base_name is not None and base_name not in BUILTINS:
                raise ValueError(f"{path}: base {base_name!r} is not a built-in; choose from {sorted(BUILTINS)}.")
            merged = {**copy.deepcopy(BUILTINS.get(base_name, {})), **{k: v for k, v in item.items() if k != "base"}}
            if base_name is not None and "note" not in item:
                changed = [k for k in item if k not in ("base", "name")]
                merged["note"] = f"{base_name} with its {', '.join(changed) or 'settings'} changed"
            specs.append(normalize(merged, item.get("name") or base_name))
    data["optimizers"] = specs
    return data


def _import(target: str) -> Any:
    module, _, attr = target.rpartition(".")
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"optimizer {target!r} needs the module {module!r}, which is not importable ({err}).") from err
    if not hasattr(mod, attr):
        raise ImportError(f"module {module!r} has no {attr!r}.")
    return getattr(mod, attr)


def available(spec: Mapping[str, Any]) -> bool:
    """Whether the optimizer's module imports (peers are optional)."""
    module = spec["optimizer"].rpartition(".")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def lowrank_split(
    model: nn.Module, target: str | Sequence[str] = ("attn", "mlp"), max_dim: int | None = None
) -> tuple[list[tuple[str, Tensor]], list[tuple[str, Tensor]]]:
    """(routed, rest) ``(name, parameter)`` lists.

    ``target`` is a list of regexes over module names whose ``nn.Linear`` 2-D weights are routed (GaLore's scripts use
    ``["attn", "mlp"]``), or ``"matrices"``: every matrix weight (``matrix_shape`` not None) of ``nn.Linear`` and conv
    modules except the model's last ``nn.Linear`` (its output layer). ``max_dim`` drops weights with more dimensions
    (peers cannot project conv kernels). Works on the meta device (no data pointers are used).
    """
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen: set[int] = set()
    for mod_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or not weight.requires_grad or matrix_shape(weight.shape) is None:
            continue
        if max_dim is not None and weight.dim() > max_dim:
            continue
        if target == "matrices":
            ok = isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and not (linears and mod_name == linears[-1])
        else:
            ok = isinstance(module, nn.Linear) and any(re.search(p, mod_name) for p in target)
        if ok:
            chosen.add(id(weight))
    routed, rest, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (routed if id(p) in chosen else rest).append((name, p))
    return routed, rest


def auto_rank(shape: torch.Size, fraction: float) -> int:
    """``max(1, round(fraction · smaller side))`` of a weight's matrix view."""
    m, n = matrix_shape(shape)
    return max(1, round(fraction * min(m, n)))


def _resolve(value: Any, key: str, gap: int) -> Any:
    if value == AUTO and key in _GAP_KEYS:
        return gap
    if key == "state_dtype" and isinstance(value, str):
        return _DTYPES.get(value, value)  # "int8" / "int4": quantized moments, by name
    return value


def build_optimizer(
    spec: Mapping[str, Any],
    model: nn.Module,
    lr: float,
    *,
    target: str | Sequence[str] = ("attn", "mlp"),
    rank: int | None = None,
    rank_fraction: float = 0.25,
    gap: int = 100,
) -> tuple[torch.optim.Optimizer, dict[str, Any]]:
    """Construct ``spec``'s optimizer over ``model`` at learning rate ``lr``; returns (optimizer, routing info).

    The routed weights get ``spec['group']`` (``auto`` rank → ``rank`` if given, else ``rank_fraction`` of the smaller
    side; ``auto`` gaps → ``gap``), grouped by rank; the rest form one plain group (``projector="identity"`` for a
    bare ``SubspaceOptimizer``). Without a ``group`` every parameter is in one group (AdamW), unless
    ``lowrank_lr_scale`` asks for the routed weights to get ``lr · scale``.
    """
    cls = _import(spec["optimizer"])
    family = spec["family"]
    kwargs = {k: _resolve(v, k, gap) for k, v in spec["kwargs"].items()}
    group_opts = spec.get("group")
    named = family == "gradspace"
    max_dim = 2 if family == "peer" else None
    routed, rest = lowrank_split(model, target, max_dim=max_dim)

    def params(pairs: Iterable[tuple[str, Tensor]]) -> list[Any]:
        return [(n, p) for n, p in pairs] if named else [p for _, p in pairs]

    if group_opts is None:
        if spec.get("lowrank_lr_scale") is not None:
            groups = [{"params": params(routed), "lr": lr * float(spec["lowrank_lr_scale"])}, {"params": params(rest)}]
        else:
            groups = [{"params": params(routed + rest)}]
    else:
        by_rank: dict[Any, list[tuple[str, Tensor]]] = {}
        for name, p in routed:
            r = group_opts.get("rank")
            if r == AUTO:
                r = rank if rank is not None else auto_rank(p.shape, rank_fraction)
            by_rank.setdefault(r, []).append((name, p))
        groups = []
        for r, pairs in by_rank.items():
            g = {k: _resolve(v, k, gap) for k, v in group_opts.items()}
            if r is not None:
                g["rank"] = r
            groups.append({"params": params(pairs), **g})
        if rest:
            plain: dict[str, Any] = {"params": params(rest)}
            if spec["optimizer"] == "gradspace.SubspaceOptimizer":
                plain["projector"] = "identity"
            groups.append(plain)
    opt = cls(groups, lr=lr, **kwargs)
    ranks = sorted(set(effective_ranks(opt, family).values()))
    info = {
        "routed_params": sum(p.numel() for _, p in routed) if (group_opts is not None or spec.get("lowrank_lr_scale")) else 0,
        "routed_tensors": len(routed) if group_opts is not None else 0,
        "rank": (ranks[0] if len(ranks) == 1 else ranks) if ranks else None,
        "gap": gap if group_opts is not None else None,
    }
    return opt, info


def measure_state_bytes(
    optimizer: torch.optim.Optimizer, per_param: bool = False, names: Mapping[int, str] | None = None
) -> int | dict[str, int]:
    """Exact optimizer-state bytes of any ``torch.optim.Optimizer``, peers' projector objects included.

    Recurses through ``optimizer.state`` (dicts, lists, tuples and objects' attributes, e.g. galore-torch's
    ``GaLoreProjector.ortho_matrix``): every tensor counts its storage's bytes once (a storage shared by several
    tensors, or a slice that keeps a larger factor alive, counts what is actually held), every Python number 8 bytes
    (as :meth:`gradspace.SubspaceOptimizer.state_bytes`); strings and ``None`` count 0. Parameters and gradients are
    not state. Works on meta tensors (storages are told apart by their ``StorageImpl``). ``per_param=True`` returns
    ``{name: bytes}`` in parameter order, names from ``names`` (``id(param) → name``), the groups' ``param_names``,
    or ``"param{i}"``.
    """
    seen_storage: set[Any] = set()
    seen_obj: set[int] = set()

    def visit(obj: Any) -> int:
        if isinstance(obj, Tensor):
            storage = obj.untyped_storage()
            key = getattr(storage, "_cdata", None) or (storage.data_ptr(), storage.nbytes())
            if key in seen_storage:  # the StorageImpl's address: also tells meta storages apart
                return 0
            seen_storage.add(key)
            return storage.nbytes()
        if isinstance(obj, (int, float)):
            return 8
        if obj is None or isinstance(obj, (str, bytes, torch.dtype, torch.device, torch.Generator)) or id(obj) in seen_obj:
            return 0
        seen_obj.add(id(obj))
        if isinstance(obj, Mapping):
            return sum(visit(v) for v in obj.values())
        if isinstance(obj, (list, tuple, set, frozenset)):
            return sum(visit(v) for v in obj)
        if hasattr(obj, "__dict__") and not isinstance(obj, (nn.Module, type)):
            return sum(visit(v) for v in vars(obj).values())
        return 0

    out: dict[str, int] = {}
    index = 0
    for group in optimizer.param_groups:
        group_names = group.get("param_names") or [None] * len(group["params"])
        for p, name in zip(group["params"], group_names):
            name = (names or {}).get(id(p)) or name or f"param{index}"
            out[name] = visit(optimizer.state[p]) if p in optimizer.state else 0
            index += 1
    return out if per_param else sum(out.values())


def format_lr(lr: float) -> str:
    """A short learning-rate label (``0.001``, ``0.0003``)."""
    return f"{lr:g}"


def effective_ranks(optimizer: torch.optim.Optimizer, family: str) -> dict[int, int]:
    """``{id(param): rank actually used}`` for the projected weights (gradspace: :func:`effective_rank` of the
    group's rank on the projected side; peers: the group's ``rank``)."""
    from ..functional import effective_rank, transposes

    out: dict[int, int] = {}
    for group in optimizer.param_groups:
        if family == "gradspace":
            if group.get("projector", "identity") == "identity":
                continue
            for p in group["params"]:
                shape = matrix_shape(p.shape)
                if shape is not None:
                    side = shape[0] if transposes(*shape, group["side"]) else shape[1]
                    out[id(p)] = effective_rank(group["rank"], side)
        elif "rank" in group:
            for p in group["params"]:
                out[id(p)] = int(group["rank"])
    return out
