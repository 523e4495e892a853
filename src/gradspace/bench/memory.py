"""``gradspace memory``: exact weight, gradient and optimizer-state bytes of a model, planned on the meta device.

Nothing is allocated: the model is built on ``torch.device("meta")`` and the optimizer is constructed on it exactly as
the benchmark constructs it (same routing, same rank and gap resolution, same preset translation of the group options).
Then the optimizer's own ``step()`` runs on meta gradients, ``step`` times: for gradspace that is the one update path
(:func:`gradspace.functional.subspace_update`: the projector's refresh, the rule's ``init`` at the state dtype the
optimizer chooses, the residual's buffers), for ``torch.optim`` optimizers and peers their own code. The plan is the
state that leaves behind, so it cannot drift from what a real run holds. Peers that cannot run on meta (apollo-torch
draws its projection with a CPU generator) are reported as not plannable. The event counter ``nonfinite_skips``
(created by a skipped step) is not planned.

Bytes are counted as the benchmark measures them (:func:`~gradspace.bench.optimizers.measure_state_bytes`: each
storage once, 8 bytes per Python number); ``tests/bench`` checks plan == measurement for every preset and AdamW.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .model import TinyLlama, load_config, named_configs
from .optimizers import build_optimizer, builtin, measure_state_bytes, normalize

#: a peer that cannot be planned (not installed, or cannot run on meta) is planned as gradspace's implementation
PEER_EQUIVALENTS = {"galore": "gs-galore", "fira": "gs-fira", "apollo": "gs-apollo", "apollo-mini": "gs-apollo-mini"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
META = torch.device("meta")

#: What the GaLore paper (Zhao et al. 2024, arXiv:2403.03507) and the APOLLO paper's copy of it publish for LLaMA-7B
#: at rank 1024 (anchors-lowrank.md §2.1 and §8): optimizer-state reduction vs BF16 Adam, and 8-bit state sizes.
GALORE_PAPER_7B = {
    "galore_state_reduction_vs_bf16_adam": 0.655,
    "galore_8bit_state_reduction_vs_bf16_adam": 0.825,
    "adam_8bit_state_G": 13.0,
    "galore_8bit_state_G": 4.9,
    "rank": 1024,
}


def meta_model(model: str | nn.Module, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, str]:
    """A model on the meta device, and its label.

    ``model`` is a module (moved to meta), a shipped config name (``llama-60m`` … ``llama-7b``), a Hugging Face style
    ``config.json`` path (built as :class:`~gradspace.bench.model.TinyLlama`), ``"package.module:factory"`` (called
    under ``torch.device("meta")``), or a Hugging Face hub name (needs ``transformers`` and the hub or its cache).
    """
    if isinstance(model, nn.Module):
        return copy.deepcopy(model).to(device=META, dtype=dtype), type(model).__name__
    if ":" in model and not Path(model).exists():
        module, _, attr = model.partition(":")
        with META:
            built = getattr(importlib.import_module(module), attr)()
        return built.to(dtype=dtype), model
    key = model.lower().replace("_", "-")
    if key in named_configs() or f"llama-{key}" in named_configs() or Path(model).is_file():
        return TinyLlama(load_config(model), device=META).to(dtype=dtype), model
    try:
        from transformers import AutoConfig, AutoModelForCausalLM  # lazy: only hub names need transformers
    except ImportError as err:
        raise ValueError(f"--model {model!r} is not a shipped config ({sorted(named_configs())}), a file or "
                         "'module:factory', and transformers is not installed to read it from the hub.") from err
    cfg = AutoConfig.from_pretrained(model)
    with META:
        built = AutoModelForCausalLM.from_config(cfg)
    return built.to(dtype=dtype), model


def _numbers_and_tensors(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            out[key] = {"shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", ""),
                        "bytes": value.untyped_storage().nbytes()}
        elif isinstance(value, (int, float)):
            out[key] = {"shape": [], "dtype": "python-number", "bytes": 8}
    return out


def plan_optimizer(opt: torch.optim.Optimizer, step: int = 1, names: dict[int, str] | None = None) -> dict[str, Any]:
    """Run ``opt`` (built on meta parameters) for ``step`` steps on zero meta gradients: its own code creates the
    state, and nothing is allocated. Returns ``{"state_bytes", "per_param", "by_key"}`` or ``{"error": message}``.

    Examples:
        >>> import gradspace
        >>> w = torch.nn.Parameter(torch.empty(64, 32, device="meta"))
        >>> plan_optimizer(gradspace.GaLoreAdamW([w], rank=8))["by_key"]["proj.basis"]  # 32 × 8 fp32
        1024
    """
    params = [p for g in opt.param_groups for p in g["params"]]
    saved = [p.grad for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    try:
        for _ in range(step):
            opt.step()
    except (RuntimeError, NotImplementedError) as err:
        return {"error": f"cannot run on the meta device: {err}"}
    finally:
        for p, g in zip(params, saved):
            p.grad = g
    by_key: dict[str, int] = defaultdict(int)
    for state in opt.state.values():
        for key, item in _numbers_and_tensors(dict(state)).items():
            by_key[key] += item["bytes"]
        for key, value in state.items():  # peers' projector objects
            if not isinstance(value, (torch.Tensor, int, float)) and hasattr(value, "__dict__"):
                for attr, t in vars(value).items():
                    if isinstance(t, torch.Tensor):
                        by_key[f"{key}.{attr}"] += t.untyped_storage().nbytes()
    per_param = measure_state_bytes(opt, per_param=True, names=names)
    return {"state_bytes": sum(per_param.values()), "per_param": per_param, "by_key": dict(by_key)}


def plan_state(
    spec: dict[str, Any] | str,
    model: nn.Module,
    *,
    target: str | Sequence[str] = ("attn", "mlp"),
    rank: int | None = None,
    rank_fraction: float = 0.25,
    gap: int = 100,
    step: int = 1,
) -> dict[str, Any]:
    """Planned optimizer state of ``spec`` on ``model`` (on the meta device) after ``step`` steps.

    Returns ``{"state_bytes": int, "per_param": {name: bytes}, "by_key": {state key: bytes}, "rank": …,
    "optimizer": …}``; ``{"error": message}`` when the optimizer cannot be planned.

    Examples:
        >>> from gradspace.bench.model import LlamaConfig, TinyLlama
        >>> meta = TinyLlama(LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=1), device="meta")
        >>> n = sum(p.numel() for p in meta.parameters())
        >>> plan_state("adamw", meta)["state_bytes"] == 2 * 4 * n + 4 * len(list(meta.parameters()))  # m, v, step
        True
        >>> plan = plan_state("gs-galore", meta)  # rank 16 = 64/4 on the attn/mlp matrices, fp32 bases
        >>> plan["rank"], plan["by_key"]["proj.basis"] == 7 * 64 * 16 * 4
        (16, True)
    """
    spec = builtin(spec) if isinstance(spec, str) else normalize(spec)
    names = {id(p): n for n, p in model.named_parameters()}
    try:
        opt, info = build_optimizer(spec, model, spec["lr"], target=target, rank=rank, rank_fraction=rank_fraction, gap=gap)
    except ImportError as err:
        return {"optimizer": spec["optimizer"], "error": str(err)}
    planned = plan_optimizer(opt, step, names)
    if "error" in planned:
        return {"optimizer": spec["optimizer"], "error": planned["error"]}
    per_param, by_key = planned["per_param"], planned["by_key"]
    return {"optimizer": spec["optimizer"], "state_bytes": sum(per_param.values()), "per_param": per_param,
            "by_key": dict(by_key), "rank": info["rank"], "gap": info["gap"]}


def layer_of(name: str) -> str:
    """``layers.3.mlp.up_proj.weight`` → ``layers.3``; ``embed_tokens.weight`` → ``embed_tokens``."""
    m = re.match(r"^(.*?(?:layers|layer|h|blocks)\.\d+)\.", name)
    return m.group(1) if m else name.rsplit(".", 1)[0] if "." in name else name


def plan_memory(
    model: str | nn.Module,
    methods: Sequence[str | dict[str, Any]] = ("adamw", "gs-galore"),
    *,
    ranks: Sequence[int | None] = (None,),
    dtypes: Sequence[str] = ("fp32", "bf16"),
    target: str | Sequence[str] = ("attn", "mlp"),
    rank_fraction: float = 0.25,
    gap: int = 200,
    step: int = 1,
) -> dict[str, Any]:
    """Weights, gradients and optimizer state (total and per layer) of ``model`` for each method × rank × dtype.

    ``dtypes`` are the parameter dtypes of pure-precision training; the moments are whatever the optimizers keep for
    them (AdamW's follow the parameter; gradspace keeps fp32 moments for fp16 parameters, and fp32 bases). The first dtype and rank fill the top-level
    ``state_bytes`` of each method.
    """
    result: dict[str, Any] = {"model": None, "n_params": 0, "dtypes": list(dtypes), "target": target if isinstance(target, str) else list(target),
                              "weights_bytes": {}, "grads_bytes": {}, "layers": {}, "methods": {}}
    for dname in dtypes:
        meta, label = meta_model(model, DTYPES[dname])
        result["model"] = label
        params = list(meta.named_parameters())
        result["n_params"] = sum(p.numel() for _, p in params)
        size = sum(p.numel() * p.element_size() for _, p in params)
        result["weights_bytes"][dname] = size
        result["grads_bytes"][dname] = sum(p.numel() * p.element_size() for _, p in params if p.requires_grad)
        layers: dict[str, int] = defaultdict(int)
        for n, p in params:
            layers[layer_of(n)] += p.numel() * p.element_size()
        result["layers"][dname] = dict(layers)
        for method in methods:
            spec = builtin(method) if isinstance(method, str) else normalize(method)
            for rank in ranks:
                key = spec["name"] if len(ranks) == 1 else f"{spec['name']}@r{rank}"
                plan = plan_state(spec, meta, target=target, rank=rank, rank_fraction=rank_fraction, gap=gap, step=step)
                entry = result["methods"].setdefault(key, {"name": spec["name"], "optimizer": spec["optimizer"],
                                                           "rank_requested": rank, "by_dtype": {}})
                if "error" in plan and spec["name"] in PEER_EQUIVALENTS:
                    twin = builtin(PEER_EQUIVALENTS[spec["name"]])
                    entry["note"] = (f"{spec['optimizer']} could not be planned ({plan['error'][:120]}); planned "
                                     f"{twin['optimizer']}, gradspace's implementation of the same method, instead")
                    entry["optimizer"] = twin["optimizer"]
                    plan = plan_state(twin, meta, target=target, rank=rank, rank_fraction=rank_fraction, gap=gap, step=step)
                if "error" in plan:
                    entry["error"] = plan["error"]
                    continue
                per_layer: dict[str, int] = defaultdict(int)
                for n, b in plan["per_param"].items():
                    per_layer[layer_of(n)] += b
                entry["rank"] = plan["rank"]
                entry["by_dtype"][dname] = {"state_bytes": plan["state_bytes"], "by_key": plan["by_key"],
                                            "per_layer": dict(per_layer)}
    for entry in result["methods"].values():
        first = entry["by_dtype"].get(dtypes[0])
        if first is not None:
            entry["state_bytes"] = first["state_bytes"]
            entry["dtype"] = dtypes[0]
    return result


def _gib(n: float) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.2f} MiB"
    return f"{n / 2**10:.1f} KiB"


def format_plan(plan: dict[str, Any], per_layer: bool = False) -> str:
    """Plain-text tables: totals per method × dtype, then per layer (the first block and its repeat count)."""
    lines = [f"model {plan['model']}: {plan['n_params']:,} parameters; routed weights: {plan['target']}"]
    for dname in plan["dtypes"]:
        adamw = next((m["by_dtype"][dname]["state_bytes"] for m in plan["methods"].values()
                      if m["optimizer"] == "torch.optim.AdamW" and dname in m["by_dtype"]), None)
        lines.append("")
        lines.append(f"[{dname} weights and gradients; optimizer state as each optimizer keeps it]")
        lines.append(f"{'':24s} {'weights':>12s} {'gradients':>12s} {'opt. state':>12s} {'% AdamW':>8s} {'total':>12s}  rank")
        for key, m in plan["methods"].items():
            if "error" in m and dname not in m["by_dtype"]:
                lines.append(f"{key:24s} not plannable: {m['error'][:90]}")
                continue
            s = m["by_dtype"][dname]["state_bytes"]
            tot = plan["weights_bytes"][dname] + plan["grads_bytes"][dname] + s
            pct = f"{100 * s / adamw:7.1f}%" if adamw else "       -"
            lines.append(f"{key:24s} {_gib(plan['weights_bytes'][dname]):>12s} {_gib(plan['grads_bytes'][dname]):>12s} "
                         f"{_gib(s):>12s} {pct} {_gib(tot):>12s}  {m.get('rank')}")
    dname = plan["dtypes"][0]
    layers = list(plan["layers"][dname])
    blocks = [l for l in layers if re.search(r"\.\d+$", l)]
    shown = layers if per_layer or len(blocks) <= 1 else [l for l in layers if l not in blocks[1:]]
    methods = [k for k, m in plan["methods"].items() if dname in m["by_dtype"]]
    lines.append("")
    lines.append(f"[per layer, {dname}: weights, then optimizer state per method]")
    lines.append(f"{'layer':28s} {'weights':>11s} " + " ".join(f"{k[:14]:>14s}" for k in methods))
    for layer in shown:
        label = layer if per_layer or layer not in blocks else f"{layer} (each of {len(blocks)})"
        cells = " ".join(f"{_gib(plan['methods'][k]['by_dtype'][dname]['per_layer'].get(layer, 0)):>14s}" for k in methods)
        lines.append(f"{label:28s} {_gib(plan['layers'][dname][layer]):>11s} {cells}")
    return "\n".join(lines)


def compare_galore_paper(plan: dict[str, Any]) -> list[str]:
    """Compare a LLaMA-7B plan (``adamw`` and GaLore methods at rank 1024, dtype bf16) to the GaLore paper's estimate.

    The paper (arXiv:2403.03507) states optimizer-state savings of 65.5 % vs BF16 Adam for GaLore and 82.5 % for 8-bit
    GaLore, and (as copied by the APOLLO paper) 4.9 G for 8-bit GaLore vs 13 G for 8-bit Adam; it does not itemize
    them. The planned bf16 state is re-counted under each convention: P (the basis) at 2 bytes per element (galore-torch
    casts P to the gradient's dtype; gradspace keeps bases in fp32), moments at 1 byte (8-bit), everything at 1 byte.
    """
    out = []
    adamw = next((m for m in plan["methods"].values() if m["optimizer"] == "torch.optim.AdamW" and "bf16" in m["by_dtype"]), None)
    galores = [m for m in plan["methods"].values() if "GaLore" in m["optimizer"] and "bf16" in m["by_dtype"]]
    if adamw is None or not galores:
        return ["(the comparison needs --optimizer adamw galore (or gs-galore) and --dtype bf16)"]
    a = adamw["by_dtype"]["bf16"]["state_bytes"]
    a_elems = sum(v for k, v in adamw["by_dtype"]["bf16"]["by_key"].items() if "exp_avg" in k) / 2
    p = GALORE_PAPER_7B
    out.append(f"LLaMA-7B optimizer state, bf16 parameters: AdamW {a / 1e9:.2f} GB ({a / 2**30:.2f} GiB); 8-bit Adam "
               f"(1 B/element) {a_elems / 1e9:.2f} GB — published: {p['adam_8bit_state_G']} G.")
    for g in galores:
        d = g["by_dtype"]["bf16"]
        basis = sum(v for k, v in d["by_key"].items() if k in ("proj.basis", "projector.ortho_matrix"))
        basis_elems = basis / (4 if g["optimizer"].startswith("gradspace") else 2)
        moment_elems = sum(v for k, v in d["by_key"].items() if "exp_avg" in k) / 2
        other = d["state_bytes"] - basis - 2 * moment_elems  # step counters, seeds
        paper = 2 * moment_elems + 2 * basis_elems + other
        eight = moment_elems + 2 * basis_elems + other
        all8 = moment_elems + basis_elems + other
        out.append(f"{g['name']} ({g['optimizer']}, rank {g.get('rank')}): planned {d['state_bytes'] / 1e9:.2f} GB = "
                   f"{100 * (1 - d['state_bytes'] / a):.1f}% less than AdamW"
                   + (" (bases kept in fp32)" if g["optimizer"].startswith("gradspace") else "") + ".")
        out.append(f"  P in bf16 (the paper's convention): {paper / 1e9:.2f} GB = {100 * (1 - paper / a):.1f}% less "
                   f"(published {100 * p['galore_state_reduction_vs_bf16_adam']:.1f}%).")
        out.append(f"  8-bit moments, P bf16: {eight / 1e9:.2f} GB = {100 * (1 - eight / a):.1f}% less; every state "
                   f"element at 1 byte: {all8 / 1e9:.2f} GB = {100 * (1 - all8 / a):.1f}% less (published: "
                   f"{p['galore_8bit_state_G']} G, {100 * p['galore_8bit_state_reduction_vs_bf16_adam']:.1f}% less).")
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``gradspace memory``."""
    p = subparsers.add_parser(
        "memory", help="exact weight/gradient/optimizer-state bytes of a model, planned on the meta device",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--model", default="llama-60m",
                   help=f"shipped config ({', '.join(named_configs())}), a config.json, 'module:factory', or a hub name")
    p.add_argument("--optimizer", nargs="+", default=["adamw", "gs-galore"],
                   help="built-in names (as gradspace bench) or gradspace preset names")
    p.add_argument("--rank", nargs="+", type=int, default=None, help="rank(s); default ¼ of each routed weight's smaller side")
    p.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"],
                   help="parameter dtype(s); AdamW's and the rules' moments follow it")
    p.add_argument("--target", nargs="+", default=["attn", "mlp"],
                   help="module-name regexes whose Linear weights get a subspace, or 'matrices'")
    p.add_argument("--gap", type=int, default=200, help="refresh gap for methods with update_proj_gap=auto")
    p.add_argument("--step", type=int, default=1, help="plan the state after this many steps (default 1)")
    p.add_argument("--per-layer", action="store_true", help="print every layer, not the first block only")
    p.add_argument("--compare-paper", action="store_true", help="compare LLaMA-7B GaLore to the GaLore paper's estimate")
    p.add_argument("--json", type=Path, help="write the plan as JSON here")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    target: Any = "matrices" if args.target == ["matrices"] else tuple(args.target)
    plan = plan_memory(args.model, args.optimizer, ranks=args.rank or [None], dtypes=args.dtype, target=target,
                       gap=args.gap, step=args.step)
    print(format_plan(plan, per_layer=args.per_layer))
    for key, m in plan["methods"].items():
        if m.get("note"):
            print(f"note ({key}): {m['note']}")
    if args.compare_paper or ("7b" in str(args.model).lower() and "bf16" in args.dtype):
        print()
        print("\n".join(compare_galore_paper(plan)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(plan, indent=1))
        print(f"\nwrote {args.json}")
    return 0
