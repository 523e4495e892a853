"""Hugging Face ``transformers.Trainer`` integration: a gradspace optimizer built from ``TrainingArguments``.

Three routes, all reading lr, weight decay, betas and eps from ``TrainingArguments`` and honouring its
``optim_target_modules`` and ``optim_args``:

* :func:`optimizer_cls_and_kwargs` for the stock Trainer's own ``Trainer(..., optimizer_cls_and_kwargs=...)``
  argument (works with accelerate's FSDP2, where ``optimizers=(opt, None)`` is refused);
* :class:`GradspaceTrainer`, a ``Trainer`` whose ``create_optimizer`` builds the optimizer (and that logs the real
  gradient norm of layer-wise updates);
* :func:`create_optimizer`, an optimizer for ``Trainer(..., optimizers=(opt, None))`` (no FSDP).

``layerwise=True`` updates each weight inside backward (:class:`gradspace.LayerwiseStepper`: no full gradient buffer
at the end of backward) while keeping gradient accumulation, the LR schedule and exact checkpoint resume.

``Trainer(optim="galore_adamw_layerwise", ...)`` (the built-in GaLore/APOLLO path) has known traps: a
non-``nn.Linear`` module that matches ``optim_target_modules`` is "matched but ignored" with a warning, the
layer-wise variants forbid gradient accumulation and DDP, report a zero gradient norm and save an empty optimizer
state (resume loses it), and the anchors' optimizer state holds Python objects that
``torch.load(weights_only=True)`` refuses. Here the optimizer is an ordinary ``torch.optim.Optimizer`` the Trainer
steps, so clipping, ``grad_norm`` logging, gradient accumulation, DDP/FSDP2 (the default process group is used
without any argument) and checkpoint resume work as with AdamW.

``transformers`` is imported only when a function is called; importing this module needs only torch.

Examples:
    >>> from transformers import Trainer, TrainingArguments  # doctest: +SKIP
    >>> from gradspace.integrations.hf import optimizer_cls_and_kwargs  # doctest: +SKIP
    >>> args = TrainingArguments("out", learning_rate=1e-3, weight_decay=0.1, max_steps=100,
    ...                          optim_target_modules=["attn", "mlp"], optim_args="rank=128")  # doctest: +SKIP
    >>> Trainer(model=model, args=args, train_dataset=ds,
    ...         optimizer_cls_and_kwargs=optimizer_cls_and_kwargs("GaLoreAdamW", model, args)).train()  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..layerwise import LayerwiseStepper, attached_stepper
from ..optimizer import SubspaceOptimizer
from ..presets import PRESETS
from ..registry import DEFAULTS
from ..routing import param_groups

__all__ = ["optimizer_cls_and_kwargs", "create_optimizer", "parse_optim_args", "hf_target_weight_names",
           "decay_parameter_names", "target_weight_names", "layerwise_grad_norm", "GradspaceTrainer",
           "HF_DEFAULTS", "HF_OPTIM_NAMES"]

_INSTALL_HINT = "pip install gradspace[hf]"
#: Output heads kept in full space by ``target_modules="all-linear"`` (as :func:`gradspace.param_groups`).
OUTPUT_HEADS: tuple[str, ...] = ("lm_head", "head", "classifier", "score")

#: transformers' own defaults for its GaLore and APOLLO optimizers (``transformers.trainer_optimizer``
#: ``_get_galore_optimizer`` / ``_get_apollo_optimizer``), applied to these presets before ``optim_args``.
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "GaLoreAdamW": {"rank": 128, "update_proj_gap": 200, "scale": 0.25, "proj_type": "std"},
    "APOLLO": {"rank": 128, "proj": "random", "scale_type": "channel", "update_proj_gap": 200, "scale": 1.0,
               "proj_type": "std"},
}
#: ``TrainingArguments.optim`` names of transformers' GaLore/APOLLO optimizers → (preset, extra options, layer-wise).
HF_OPTIM_NAMES: dict[str, tuple[str, dict[str, Any], bool]] = {
    "galore_adamw": ("GaLoreAdamW", {}, False),
    "galore_adamw_8bit": ("GaLoreAdamW", {"state_dtype": "int8"}, False),
    "galore_adamw_layerwise": ("GaLoreAdamW", {}, True),
    "galore_adamw_8bit_layerwise": ("GaLoreAdamW", {"state_dtype": "int8"}, True),
    "apollo_adamw": ("APOLLO", {}, False),
    "apollo_adamw_layerwise": ("APOLLO", {}, True),
}
#: how transformers types these ``optim_args`` keys for GaLore/APOLLO (``rank`` may also be a fraction here)
_HF_TYPES: dict[str, Any] = {"update_proj_gap": int, "scale": float, "proj_type": str, "proj": str,
                             "scale_type": str}


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


#: "not given": the value then comes from ``TrainingArguments`` (``optim_target_modules``, ``optim_args``)
UNSET: Any = _Unset()


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - exercised only where transformers is absent
        raise ImportError(
            f"gradspace.integrations.hf needs Hugging Face transformers (and accelerate for Trainer): {_INSTALL_HINT}"
        ) from err
    return transformers


def decay_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters Hugging Face's ``Trainer`` applies weight decay to (transformers' own rule).

    Uses ``Trainer.get_decay_parameter_names`` where it exists (no decay for ``LayerNorm`` layers and names containing
    ``bias``, ``layernorm``, ``rmsnorm`` or ``norm``), else ``trainer_pt_utils.get_parameter_names`` with
    ``ALL_LAYERNORM_LAYERS`` minus biases (transformers < 4.40).

    Args:
        model: the model the Trainer trains.

    Examples:
        >>> import torch
        >>> from gradspace.integrations.hf import decay_parameter_names
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        >>> sorted(decay_parameter_names(model))
        ['0.weight']
    """
    _require_transformers()
    from transformers import Trainer

    getter = getattr(Trainer, "get_decay_parameter_names", None)
    if getter is not None:
        try:
            return set(getter(None, model))  # uses only `model` (transformers 4.40 … 5.x)
        except AttributeError:  # a future version that reads `self`: fall through to the helper
            pass
    from transformers.trainer_pt_utils import get_parameter_names

    try:
        from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
    except ImportError:  # pragma: no cover
        ALL_LAYERNORM_LAYERS = [nn.LayerNorm]
    return {n for n in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in n}


def _matches(name: str, patterns: Sequence[str]) -> bool:
    last = name.rsplit(".", 1)[-1]
    return any(name == p or last == p or re.search(p, name) for p in patterns)


def _collapse(names: Sequence[str]) -> list[str]:
    """``model.layers.0.mlp.up_proj``, ``model.layers.1.mlp.up_proj`` → ``model.layers.N.mlp.up_proj`` (unique)."""
    return list(dict.fromkeys(re.sub(r"\.\d+(?=\.|$)", ".N", n) for n in names))


def _listing(names: Sequence[str], limit: int = 8) -> str:
    short = _collapse(names)
    return ", ".join(short[:limit]) + (" …" if len(short) > limit else "")


def target_weight_names(
    model: nn.Module,
    target_modules: str | Sequence[str] | None = "all-linear",
    *,
    exclude: Sequence[str] | None = None,
    rank: int | float = 128,
) -> list[str]:
    """The parameter names (``<module>.weight``) that get a subspace, chosen like ``optim_target_modules``.

    Args:
        model: the model.
        target_modules: ``"all-linear"`` — every ``nn.Linear`` except output heads (``OUTPUT_HEADS``) and weights
            tied to an embedding; a list of module-name patterns (a pattern matches a module whose full name or last
            component equals it, or that ``re.search`` finds in its name; a single non-``"all-linear"`` string is one
            pattern); or ``None`` — :func:`gradspace.param_groups`' default (``nn.Linear`` weights except output
            heads and the model's last ``nn.Linear``).
        exclude: module-name patterns never projected (default: modules whose last name component is one of
            ``OUTPUT_HEADS`` for ``"all-linear"``, none for a pattern list).
        rank: only used for ``target_modules=None`` (forwarded to :func:`gradspace.param_groups`).

    Only ``nn.Linear`` weights are projected. A matched module that is not ``nn.Linear`` but holds parameters of its
    own (an embedding, a norm, a conv, a custom layer) raises ``ValueError`` naming it — never "matched but ignored".
    A matched parameter-free container (``self_attn``, ``mlp``) selects the matched ``nn.Linear`` layers inside it.
    No match raises ``ValueError`` listing the model's ``nn.Linear`` module names.

    Examples:
        >>> import torch
        >>> from gradspace.integrations.hf import target_weight_names
        >>> model = torch.nn.ModuleDict({"attn": torch.nn.Linear(8, 8), "norm": torch.nn.LayerNorm(8),
        ...                              "lm_head": torch.nn.Linear(8, 4)})
        >>> target_weight_names(model, "all-linear")
        ['attn.weight']
        >>> target_weight_names(model, ["attn", "norm"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: target_modules=['attn', 'norm'] matched module(s) that are not nn.Linear: norm (LayerNorm). ...
    """
    if target_modules is None:
        groups = param_groups(model, rank=rank, verbose=False, **({"exclude": tuple(exclude)} if exclude is not None else {}))
        return [n for g in groups if "rank" in g for n, _ in g["params"]]
    all_linear = isinstance(target_modules, str) and target_modules.replace("_", "-") == "all-linear"
    patterns: list[str] = [] if all_linear else [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not all_linear and (not patterns or not all(isinstance(p, str) for p in patterns)):
        raise TypeError(f"target_modules must be 'all-linear', a list of module-name patterns or None, got {target_modules!r}.")
    if exclude is None:  # output heads by their exact last name component ("multihead_proj" is not a head)
        exclude = [rf"(^|\.){re.escape(h)}$" for h in OUTPUT_HEADS] if all_linear else []
    embedding_ptrs = {m.weight.data_ptr() for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]

    modules = dict(model.named_modules())
    selected: set[str] = set()
    not_linear: list[str] = []
    for name, module in modules.items():
        if not name or _matches(name, exclude):
            continue
        if not (all_linear and isinstance(module, nn.Linear)) and not (patterns and _matches(name, patterns)):
            continue
        if isinstance(module, nn.Linear):
            selected.add(name)
        elif any(True for _ in module.parameters(recurse=False)):
            not_linear.append(f"{name} ({type(module).__name__})")
        else:  # a parameter-free container (self_attn, mlp, a decoder layer): the nn.Linear layers inside it
            selected.update(f"{name}.{sub}" for sub, m in module.named_modules()
                            if sub and isinstance(m, nn.Linear) and not _matches(f"{name}.{sub}", exclude))
    tied = [n for n in modules if n in selected and modules[n].weight.data_ptr() in embedding_ptrs]
    chosen = [f"{n}.weight" for n in modules
              if n in selected and n not in tied and modules[n].weight.requires_grad]
    if not_linear:
        raise ValueError(
            f"target_modules={target_modules!r} matched module(s) that are not nn.Linear: "
            f"{', '.join(not_linear[:8])}{' …' if len(not_linear) > 8 else ''}. gradspace projects only nn.Linear "
            "weights; use more specific patterns (e.g. 'q_proj' rather than 'layers'), 'all-linear', or exclude=."
        )
    if tied and patterns:
        raise ValueError(
            f"target_modules={target_modules!r} matched {', '.join(tied)}, whose weight is tied to an embedding; "
            "embeddings are never projected. Add it to exclude=."
        )
    if not chosen:
        raise ValueError(
            f"target_modules={target_modules!r} matched no trainable nn.Linear module. nn.Linear modules of this "
            f"model: {', '.join(_collapse(linears)[:30]) or '(none)'}"
            + (f"; excluded: {', '.join(n for n in linears if _matches(n, exclude))}." if exclude else ".")
        )
    return chosen


def hf_target_weight_names(
    model: nn.Module,
    optim_target_modules: str | Sequence[str] = "all-linear",
    *,
    exclude: Sequence[str] | None = None,
) -> list[str]:
    """The ``nn.Linear`` weights ``TrainingArguments.optim_target_modules`` selects, with transformers' own matching.

    A module matches as in transformers' GaLore/APOLLO path (``trainer_utils.check_target_module_exists``): a string
    is a regex that must match the whole module name (``re.fullmatch``); a list matches a module whose name equals an
    entry, contains it as a substring, or fully matches it as a regex; ``"all-linear"`` matches every ``nn.Linear``.
    Differences from transformers, all in the direction of not projecting what should not be projected:
    ``"all-linear"`` keeps output heads (``OUTPUT_HEADS``, by the last name component) in full space (transformers
    projects ``lm_head`` too; name it to project it), a weight tied to an embedding is never projected, and the
    "matched but ignored" modules (a matched non-``nn.Linear`` module with parameters of its own, e.g. a norm under
    ``["layers"]``) stay in full space with one ``UserWarning`` naming them all.

    Args:
        model: the model.
        optim_target_modules: ``"all-linear"``, a regex string, or a list of names / substrings / regexes.
        exclude: module-name patterns never projected (``re.search``; default: output heads for ``"all-linear"``).

    Raises:
        TypeError: ``optim_target_modules`` is not a string or a list of strings.
        ValueError: nothing trainable is selected (the message lists the model's ``nn.Linear`` modules).

    Examples:
        >>> import torch
        >>> from gradspace.integrations.hf import hf_target_weight_names
        >>> model = torch.nn.ModuleDict({"q_proj": torch.nn.Linear(8, 8), "up_proj": torch.nn.Linear(8, 8),
        ...                              "lm_head": torch.nn.Linear(8, 4)})
        >>> hf_target_weight_names(model, ["q_proj"]), hf_target_weight_names(model, r".*_proj")
        (['q_proj.weight'], ['q_proj.weight', 'up_proj.weight'])
        >>> hf_target_weight_names(model, "all-linear")
        ['q_proj.weight', 'up_proj.weight']
    """
    _require_transformers()
    from transformers.trainer_utils import check_target_module_exists

    targets = optim_target_modules
    if isinstance(targets, tuple):
        targets = list(targets)
    if not (isinstance(targets, str) or (isinstance(targets, list) and targets
                                          and all(isinstance(t, str) for t in targets))):
        raise TypeError("optim_target_modules must be 'all-linear', a regex string or a list of strings, got "
                        f"{optim_target_modules!r}.")
    all_linear = isinstance(targets, str) and targets.replace("_", "-") == "all-linear"
    if exclude is None:
        exclude = [rf"(^|\.){re.escape(h)}$" for h in OUTPUT_HEADS] if all_linear else []
    embedding_ptrs = {m.weight.data_ptr() for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    chosen: list[str] = []
    ignored: list[str] = []
    tied: list[str] = []
    for name, module in model.named_modules():
        if not name or any(re.search(p, name) for p in exclude):
            continue
        if all_linear:
            found, is_regex = isinstance(module, nn.Linear), False
        else:
            found, is_regex = check_target_module_exists(targets, name, return_is_regex=True)
        if not found:
            continue
        if not isinstance(module, nn.Linear):
            if not is_regex and any(True for _ in module.parameters(recurse=False)):
                ignored.append(f"{name} ({type(module).__name__})")
            continue
        if module.weight.data_ptr() in embedding_ptrs:
            tied.append(name)
        elif module.weight.requires_grad:
            chosen.append(f"{name}.weight")
    if ignored or (tied and not all_linear):
        warnings.warn(
            f"optim_target_modules={optim_target_modules!r} matched "
            + (f"module(s) that are not nn.Linear: {_listing(ignored)}" if ignored else "")
            + ("; " if ignored and tied and not all_linear else "")
            + (f"weight(s) tied to an embedding: {_listing(tied)}" if tied and not all_linear else "")
            + ". They stay in full space (gradspace projects only nn.Linear weights, never embeddings).",
            UserWarning,
            stacklevel=3,
        )
    if not chosen:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(
            f"optim_target_modules={optim_target_modules!r} selects no trainable nn.Linear weight (a string is a regex "
            "that must match the whole module name; list entries match as a name, a substring or a full regex). "
            f"nn.Linear modules of this model: {', '.join(_collapse(linears)[:30]) or '(none)'}."
        )
    return chosen


def _cast(key: str, raw: str, cls: type) -> Any:
    """An ``optim_args`` value typed as transformers does for GaLore/APOLLO, else by the option's default's type."""
    text = raw.strip()
    if key == "rank":
        try:
            return int(text)
        except ValueError:
            return float(text)
    if key in _HF_TYPES:
        return _HF_TYPES[key](text)
    default: Any = UNSET
    anchor = getattr(cls, "anchor", {})
    if key in anchor:
        default = anchor[key]
    elif key in DEFAULTS:
        default = DEFAULTS[key]
    if isinstance(default, bool) or text.lower() in ("true", "false"):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"optim_args: {key}={raw!r} must be true or false.")
        return text.lower() in ("true", "1")
    if isinstance(default, int) and not isinstance(default, bool):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, str):
        return text
    if text.lower() == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_optim_args(optim_args: str | None, optimizer: str | type = "GaLoreAdamW") -> dict[str, Any]:
    """``TrainingArguments.optim_args`` (``"k=v,k=v"``, parsed as transformers parses it) as typed keyword arguments.

    ``rank`` is an int (or a fraction such as ``0.25``), ``update_proj_gap`` an int, ``scale`` a float,
    ``proj_type``/``proj``/``scale_type`` strings, as transformers types them for GaLore/APOLLO; any other key takes
    the type of its default in the optimizer's signature or :data:`gradspace.registry.DEFAULTS` (``true``/``false``
    for flags), else an int, a float or a string, in that order. Unknown keys reach the optimizer, which refuses
    them with ``TypeError`` listing the allowed names.

    Examples:
        >>> from gradspace.integrations.hf import parse_optim_args
        >>> parse_optim_args("rank=64, update_proj_gap=500, scale=0.25, proj_type=right, refresh=adaptive")
        {'rank': 64, 'update_proj_gap': 500, 'scale': 0.25, 'proj_type': 'right', 'refresh': 'adaptive'}
    """
    if not optim_args:
        return {}
    cls = _optimizer_class(optimizer)[0]
    out: dict[str, Any] = {}
    for mapping in optim_args.replace(" ", "").split(","):
        if not mapping:
            continue
        key, sep, value = mapping.partition("=")
        if not sep or not key:
            raise ValueError(f"optim_args={optim_args!r}: {mapping!r} is not key=value.")
        out[key] = _cast(key, value, cls)
    return out


def _optimizer_class(optimizer: str | type) -> tuple[type[SubspaceOptimizer], dict[str, Any], bool]:
    """(class, options the name implies, layer-wise) for a gradspace class, preset name or transformers optim name."""
    if isinstance(optimizer, str):
        optimizer = str(getattr(optimizer, "value", optimizer))  # transformers' OptimizerNames enum
        if optimizer in HF_OPTIM_NAMES:
            preset, extra, layerwise = HF_OPTIM_NAMES[optimizer]
            return PRESETS[preset], dict(extra), layerwise
        choices = {"SubspaceOptimizer": SubspaceOptimizer, **PRESETS}
        if optimizer not in choices:
            raise ValueError(f"optimizer={optimizer!r} is not a gradspace optimizer; choose one of {sorted(choices)}, "
                             f"one of transformers' names {sorted(HF_OPTIM_NAMES)}, or pass a class.")
        return choices[optimizer], {}, False
    if isinstance(optimizer, type) and issubclass(optimizer, SubspaceOptimizer):
        return getattr(optimizer, "_gradspace_base", optimizer), {}, False
    # a plain torch optimizer would accept the 'rank' group key and silently train everything in full space
    raise TypeError(f"optimizer must be a gradspace optimizer class (a SubspaceOptimizer subclass) or its name, got {optimizer!r}.")


def _is_main(training_args: Any) -> bool:
    index = getattr(training_args, "process_index", None)
    if index is not None:
        return index == 0
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


@dataclass
class _Route:
    """How to turn a model (or the Trainer's parameter groups) into gradspace groups, done at construction time."""

    cls: type
    model: nn.Module | None
    target: Any  # "all-linear", patterns, or None (param_groups' default)
    hf_semantics: bool  # match target like optim_target_modules (else like target_weight_names)
    exclude: Sequence[str] | None
    rank: int | float
    weight_decay: float
    group_options: dict[str, Any]
    shown: dict[str, Any]  # for the printed summary
    verbose: bool
    main_process: bool
    layerwise: bool = False
    accumulation_steps: int = 1
    per_tensor_max_grad_norm: float | None = None
    chosen: list[str] = field(default_factory=list)

    def targets(self, model: nn.Module) -> list[str]:
        if self.hf_semantics and self.target is not None:
            return hf_target_weight_names(model, self.target, exclude=self.exclude)
        return target_weight_names(model, self.target, exclude=self.exclude, rank=self.rank)

    def groups(self, params: Any) -> list[dict[str, Any]]:
        if isinstance(params, nn.Module):
            model = params
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        else:
            model = self.model
            if model is None:
                raise TypeError("gradspace.integrations.hf: the optimizer got parameters without names; pass the model "
                                "(optimizer_cls_and_kwargs(name, model, args)) so they can be routed by name.")
            names = {id(p): n for n, p in model.named_parameters()}
            given: list[Any] = []
            for item in params:
                if isinstance(item, dict):
                    given.extend(item["params"])
                else:
                    given.append(item[1] if isinstance(item, tuple) else item)
            missing = [tuple(p.shape) for p in given if id(p) not in names]
            if missing:
                raise ValueError(
                    f"gradspace.integrations.hf: {len(missing)} parameter(s) handed to the optimizer (shapes "
                    f"{missing[:4]}) are not parameters of the model given to optimizer_cls_and_kwargs; pass the model "
                    "the Trainer trains."
                )
            wanted = {id(p) for p in given}
            named = [(n, p) for n, p in model.named_parameters() if id(p) in wanted]  # model order, deduplicated
        chosen = set(self.targets(model))
        self.chosen = [n for n, _ in named if n in chosen]
        decay = decay_parameter_names(model)
        wd = self.weight_decay
        groups: list[dict[str, Any]] = []
        for projected in (True, False):
            for decays in ((True, False) if wd else (None,)):
                members = [(n, p) for n, p in named
                           if (n in chosen) == projected and (decays is None or (n in decay) == decays)]
                if not members:
                    continue
                group: dict[str, Any] = {"params": members, "weight_decay": wd if decays or decays is None else 0.0}
                if projected:
                    group.update(self.group_options, rank=self.rank)
                else:
                    group["projector"] = "identity"
                groups.append(group)
        return groups

    def finish(self, opt: SubspaceOptimizer) -> None:
        name = self.cls.__name__
        projected = [n for g in opt.param_groups if g["projector"] != "identity" for n in g.get("param_names", [])]
        if self.chosen and not projected:
            warnings.warn(
                f"{name} projects none of the {len(self.chosen)} targeted weight(s) (it runs every parameter in full "
                "space); choose a subspace optimizer or preset.",
                UserWarning,
                stacklevel=4,
            )
        if self.layerwise:
            LayerwiseStepper(opt, accumulation_steps=self.accumulation_steps,
                             max_grad_norm=self.per_tensor_max_grad_norm)
        if self.verbose and self.main_process:
            every = [n for g in opt.param_groups for n in g.get("param_names", [])]
            n_decay = sum(len(g["params"]) for g in opt.param_groups if g["weight_decay"])
            print(
                f"gradspace.integrations.hf: {name}("
                + ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v:g}" if isinstance(v, float) else
                            f"{k}={v}" for k, v in self.shown.items())
                + f", weight_decay={self.weight_decay:g} on {n_decay} of {len(every)} tensors"
                + (f", layer-wise (accumulation {self.accumulation_steps})" if self.layerwise else "")
                + ")"
            )
            print(
                f"gradspace.integrations.hf: {len(projected)} nn.Linear weight(s) get a rank-{self.rank} subspace "
                f"(target={self.target!r}): {_listing(projected)}"
            )
            full = [n for n in every if n not in set(projected)]
            print(f"gradspace.integrations.hf: {len(full)} tensor(s) in full space: {_listing(full)}")


_ROUTED: dict[type, type] = {}


def _routed_class(base: type[SubspaceOptimizer]) -> type[SubspaceOptimizer]:
    """``base`` with a constructor that routes a model, or the Trainer's parameter groups, by parameter name.

    The subclass keeps ``base``'s name (presets translate anchor names per class name) and is an
    ``torch.optim.Optimizer`` subclass, so transformers' ``Trainer`` calls it as ``cls(params, **kwargs)`` with the
    parameters it collected from the model it trains (after any wrapping), and routing happens on those.
    """
    if base in _ROUTED:
        return _ROUTED[base]

    def __init__(self: Any, params: Any, *, gradspace_route: _Route, **kwargs: Any) -> None:
        base.__init__(self, gradspace_route.groups(params), **kwargs)
        gradspace_route.finish(self)

    @torch.no_grad()
    def step(self: Any, closure: Any = None) -> Any:
        stepper = attached_stepper(self)
        if stepper is None:
            return base.step(self, closure)
        # layer-wise: the window's last backward already updated (and freed) every gradient; what is left is a
        # window the Trainer closed early (the epoch's last, shorter one): finish it as step() would, restart counting
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pending = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not pending:
            self.layerwise_grad_norm = stepper.grad_norm
            return loss
        norms = [float(p.grad.detach().float().norm()) for p in pending]
        limit = stepper.max_grad_norm
        if limit is not None:
            for p, norm in zip(pending, norms):
                if norm > limit:
                    p.grad.mul_(limit / (norm + 1e-6))
        base.step(self)
        for p in pending:
            p.grad = None
        steps, accumulation = stepper.steps + 1, stepper.accumulation_steps
        stepper.remove()
        LayerwiseStepper(self, accumulation_steps=accumulation, max_grad_norm=limit).load_state_dict(
            {"steps": steps, "accumulation_steps": accumulation})
        self.layerwise_grad_norm = math.sqrt(sum(n * n for n in norms))
        return loss

    routed = type(base.__name__, (base,), {
        "__init__": __init__, "step": step, "__module__": __name__, "__qualname__": f"routed[{base.__qualname__}]",
        "__doc__": base.__doc__, "_gradspace_base": base, "layerwise_grad_norm": math.nan,
    })
    _ROUTED[base] = routed
    return routed


def layerwise_grad_norm(optimizer: Any) -> float | None:
    """The global gradient norm of the last layer-wise step (``None`` if ``optimizer`` is not layer-wise).

    With ``layerwise=True`` the gradients are consumed inside backward, so the Trainer's own ``grad_norm`` (computed
    from ``p.grad`` afterwards) is 0; :class:`GradspaceTrainer` logs this value instead.
    """
    opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    if attached_stepper(opt) is None:
        return None
    return float(getattr(opt, "layerwise_grad_norm", math.nan))


def _plan(
    optimizer: str | type,
    training_args: Any,
    *,
    target_modules: Any,
    rank: Any,
    exclude: Sequence[str] | None,
    layerwise: bool | None,
    per_tensor_clipping: bool,
    verbose: bool,
    options: dict[str, Any],
    explicit_semantics: str,
    where: str,
) -> tuple[type, dict[str, Any], _Route]:
    """The routed optimizer class, its constructor keywords and the routing, from a name, TrainingArguments and options."""
    cls, implied, layerwise_by_name = _optimizer_class(optimizer)
    fixed = sorted({"lr", "weight_decay", "params"} & set(options))
    if fixed:
        raise TypeError(f"{fixed} come from training_args (learning_rate, weight_decay) and the routing; "
                        f"set them in TrainingArguments, not as {where} keywords.")
    lr = float(getattr(training_args, "learning_rate", 5e-5))
    wd = float(getattr(training_args, "weight_decay", 0.0))
    betas = (float(getattr(training_args, "adam_beta1", 0.9)), float(getattr(training_args, "adam_beta2", 0.999)))
    eps = float(getattr(training_args, "adam_epsilon", 1e-8))

    # precedence: transformers' defaults for GaLore/APOLLO < what the name implies < optim_args < explicit keywords
    from_args = parse_optim_args(getattr(training_args, "optim_args", None), cls)
    explicit = dict(options)
    if rank is not UNSET:
        explicit["rank"] = rank
    clash = {k: (from_args[k], v) for k, v in explicit.items() if k in from_args and from_args[k] != v}
    if clash:
        warnings.warn(
            f"{where}: keyword(s) override training_args.optim_args: "
            + ", ".join(f"{k}={v!r} (optim_args: {a!r})" for k, (a, v) in clash.items()),
            UserWarning,
            stacklevel=3,
        )
    merged = {**HF_DEFAULTS.get(cls.__name__, {}), **implied, **from_args, **explicit}
    rank_value = merged.pop("rank", 128)

    args_targets = getattr(training_args, "optim_target_modules", None)
    if target_modules is UNSET:
        target, hf_semantics = (args_targets, True) if args_targets is not None else ("all-linear", True)
    else:
        target, hf_semantics = target_modules, explicit_semantics == "hf"
        if args_targets is not None and args_targets != target_modules:
            warnings.warn(
                f"{where}: target_modules={target_modules!r} is used; training_args.optim_target_modules="
                f"{args_targets!r} is ignored (leave target_modules unset to use it).",
                UserWarning,
                stacklevel=3,
            )

    if layerwise is None:
        layerwise = layerwise_by_name
    accumulation = int(getattr(training_args, "gradient_accumulation_steps", 1) or 1)
    per_tensor: float | None = None
    if layerwise:
        world = int(getattr(training_args, "world_size", 1) or 1)
        if world > 1:
            raise ValueError(f"{where}: layerwise=True is single-process only (world_size={world}): under DDP/FSDP the "
                             "gradient seen inside backward is not yet reduced. Use layerwise=False.")
        max_norm = float(getattr(training_args, "max_grad_norm", 0.0) or 0.0)
        if max_norm > 0 and not per_tensor_clipping:
            raise ValueError(
                f"{where}: layerwise=True cannot clip by the global gradient norm (max_grad_norm={max_norm:g}): each "
                "weight is updated before the next one's gradient exists. Set TrainingArguments(max_grad_norm=0) for "
                f"no clipping, or pass per_tensor_clipping=True to clip each weight's gradient to {max_norm:g}."
            )
        per_tensor = max_norm if max_norm > 0 else None
        if getattr(training_args, "gradient_checkpointing", False):
            import transformers

            ckpt = getattr(training_args, "gradient_checkpointing_kwargs", None) or {}
            if ckpt.get("use_reentrant", int(transformers.__version__.split(".")[0]) < 5):  # 4.x default: reentrant
                raise ValueError(
                    f"{where}: layerwise=True with reentrant activation checkpointing: each checkpointed segment's "
                    "backward runs as a separate autograd graph task, which LayerwiseStepper counts as another "
                    "micro-batch (it would step too early). Set gradient_checkpointing_kwargs={'use_reentrant': False}."
                )
    elif per_tensor_clipping:
        raise ValueError(f"{where}: per_tensor_clipping=True applies only with layerwise=True (the Trainer clips by the "
                         "global norm otherwise).")

    signature = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {"lr": lr}
    if "betas" in signature or cls is SubspaceOptimizer or "betas" in getattr(cls, "anchor", {}):
        kwargs["betas"] = betas
    if "eps" in signature or cls is SubspaceOptimizer or "eps" in getattr(cls, "anchor", {}):
        kwargs["eps"] = eps
    kwargs.update(merged)
    kwargs["weight_decay"] = wd
    # a gradspace option the preset does not name in its anchor arguments would be shadowed by the value the preset
    # translates into each projected group (e.g. refresh_every by GaLoreAdamW's update_proj_gap): set it there too
    anchor = getattr(cls, "anchor", {})
    group_options = {k: v for k, v in merged.items()
                     if k in DEFAULTS and k not in signature and k not in anchor and k != "rank"}
    route = _Route(cls=cls, model=None, target=target, hf_semantics=hf_semantics, exclude=exclude, rank=rank_value,
                   weight_decay=wd, group_options=group_options,
                   shown={k: v for k, v in kwargs.items() if k != "weight_decay"}, verbose=verbose,
                   main_process=_is_main(training_args), layerwise=bool(layerwise), accumulation_steps=accumulation,
                   per_tensor_max_grad_norm=per_tensor)
    return _routed_class(cls), kwargs, route


class _Factory:
    """transformers ≥ 5 calls a non-``Optimizer`` class as ``cls()(model, **kwargs)``: route the model it trains."""

    def __call__(self, model: nn.Module, *, gradspace_route: _Route, **kwargs: Any) -> SubspaceOptimizer:
        gradspace_route.model = model
        return _routed_class(gradspace_route.cls)(model, gradspace_route=gradspace_route, **kwargs)


def optimizer_cls_and_kwargs(
    name: str | type,
    model: nn.Module | None = None,
    args: Any = None,
    *,
    target_modules: Any = UNSET,
    rank: Any = UNSET,
    exclude: Sequence[str] | None = None,
    layerwise: bool | None = None,
    per_tensor_clipping: bool = False,
    verbose: bool = True,
    **options: Any,
) -> tuple[type, dict[str, Any]]:
    """``(optimizer_cls, optimizer_kwargs)`` for ``transformers.Trainer(..., optimizer_cls_and_kwargs=...)``.

    The Trainer builds the optimizer itself, at the point where it would build AdamW (under accelerate's FSDP2:
    before sharding; accelerate then swaps in the sharded parameters), by calling ``optimizer_cls(params, **kwargs)``
    with the parameters it collected from the model. The returned class is the gradspace optimizer (a subclass that
    keeps its name; ``isinstance(opt, gradspace.GaLoreAdamW)`` holds) whose constructor routes those parameters by
    their names in ``model``: targeted ``nn.Linear`` weights get a rank-``rank`` subspace, everything else runs in
    full space, and weight decay goes only where the Trainer puts it (:func:`decay_parameter_names`).

    From ``args`` (a ``TrainingArguments``): ``learning_rate``, ``weight_decay``, ``adam_beta1``/``adam_beta2``
    (→ ``betas``), ``adam_epsilon`` (→ ``eps``); ``optim_target_modules`` (transformers' matching, see
    :func:`hf_target_weight_names`; unset: ``"all-linear"``); ``optim_args`` (``"rank=64,update_proj_gap=500"``,
    typed by :func:`parse_optim_args`); ``gradient_accumulation_steps`` and ``max_grad_norm`` for ``layerwise``.
    For ``GaLoreAdamW`` and ``APOLLO`` transformers' defaults apply first (:data:`HF_DEFAULTS`: rank 128,
    ``update_proj_gap`` 200, GaLore ``scale`` 0.25, ``proj_type="std"``; APOLLO ``proj="random"``,
    ``scale_type="channel"``, ``scale`` 1). Precedence: those defaults < ``optim_args`` < keywords given here (a
    keyword that overrides a different ``optim_args`` value warns).

    Args:
        name: a preset name (``"GaLoreAdamW"``, ``"APOLLO"``, ``"Fira"``, …), ``"SubspaceOptimizer"``, a gradspace
            class, or one of transformers' names (:data:`HF_OPTIM_NAMES`: ``"galore_adamw"``,
            ``"galore_adamw_8bit"`` (int8 moments), ``"apollo_adamw"`` and their ``_layerwise`` forms), so
            ``optimizer_cls_and_kwargs(args.optim, model, args)`` keeps an existing configuration.
        model: the model the Trainer trains (needed for names). ``None`` works with transformers ≥ 5, which hands the
            model to an optimizer factory; then errors in the routing surface only when training starts.
        args: the ``TrainingArguments`` given to the Trainer (``None``: TrainingArguments' defaults, lr 5e-5).
        target_modules: overrides ``args.optim_target_modules`` (same matching; a differing value warns).
        rank: subspace rank, int ≥ 1 or a fraction in (0, 1) (overrides ``optim_args``' ``rank``).
        exclude: module-name patterns never projected (default: output heads for ``"all-linear"``).
        layerwise: update each weight inside backward (:class:`gradspace.LayerwiseStepper`), with the Trainer's
            gradient accumulation, LR schedule and exact checkpoint resume (``None``: as the name says, e.g.
            ``"galore_adamw_layerwise"``). Single process only; the Trainer's own ``grad_norm`` log reads 0 (the
            gradients are gone) — :class:`GradspaceTrainer` logs the real one. Global-norm clipping is impossible
            layer-wise: needs ``max_grad_norm=0`` or ``per_tensor_clipping=True``.
        per_tensor_clipping: with ``layerwise``, clip each weight's gradient to ``args.max_grad_norm``.
        verbose: print (on the main process, when the Trainer builds the optimizer) the optimizer, its
            hyperparameters and which weights are projected.
        **options: the optimizer's own keyword arguments (``update_proj_gap``, ``scale``, ``proj_type``, …) and any
            gradspace option (``refresh_every``, ``projector``, ``state_dtype``, ``seed``, …).

    Returns:
        ``(cls, kwargs)``; ``kwargs`` holds the constructor keywords (``lr``, ``betas``, …) and ``gradspace_route``.

    Raises:
        ValueError: nothing selected; unknown name; ``layerwise`` with ``max_grad_norm > 0`` (without
            ``per_tensor_clipping``) or with more than one process.
        TypeError: ``name`` is not a gradspace optimizer; ``lr``/``weight_decay`` given as keywords.

    Examples:
        >>> import torch, transformers
        >>> from gradspace.integrations.hf import optimizer_cls_and_kwargs
        >>> model = torch.nn.ModuleDict({"q_proj": torch.nn.Linear(16, 16), "lm_head": torch.nn.Linear(16, 8)})
        >>> args = transformers.TrainingArguments("out", learning_rate=1e-3, optim_target_modules=["q_proj"],
        ...                                       optim_args="rank=4,update_proj_gap=50", report_to=[])
        >>> cls, kwargs = optimizer_cls_and_kwargs("GaLoreAdamW", model, args, verbose=False)
        >>> opt = cls(model.parameters(), **kwargs)  # what the Trainer does
        >>> [(g["param_names"], g["projector"], g.get("rank")) for g in opt.param_groups]
        [(['q_proj.weight'], 'svd', 4), (['q_proj.bias', 'lm_head.weight', 'lm_head.bias'], 'identity', 128)]
        >>> opt.param_groups[0]["scale"], opt.param_groups[0]["refresh_every"]  # transformers' GaLore scale
        (0.25, 50)
    """
    _require_transformers()
    optimizer_cls, kwargs, route = _plan(
        name, args, target_modules=target_modules, rank=rank, exclude=exclude, layerwise=layerwise,
        per_tensor_clipping=per_tensor_clipping, verbose=verbose, options=options, explicit_semantics="hf",
        where="optimizer_cls_and_kwargs")
    kwargs["gradspace_route"] = route
    if model is None:
        try:
            from transformers.trainer_optimizer import is_optimizer_factory  # noqa: F401  (transformers >= 5)
        except ImportError:
            raise TypeError("optimizer_cls_and_kwargs: this transformers version cannot hand the model to an optimizer "
                            "factory; pass the model: optimizer_cls_and_kwargs(name, model, args).") from None
        return _Factory, kwargs
    route.model = model
    route.targets(model)  # refuse a selection that matches nothing now, not when training starts
    return optimizer_cls, kwargs


def create_optimizer(
    model: nn.Module,
    training_args: Any = None,
    optimizer: str | type = "SubspaceOptimizer",
    target_modules: Any = UNSET,
    rank: Any = UNSET,
    *,
    exclude: Sequence[str] | None = None,
    layerwise: bool | None = None,
    per_tensor_clipping: bool = False,
    verbose: bool = True,
    **subspace_options: Any,
) -> SubspaceOptimizer:
    """Build a gradspace optimizer for ``transformers.Trainer(model, args, optimizers=(opt, None))``.

    Reads ``learning_rate``, ``weight_decay``, ``adam_beta1``/``adam_beta2`` (→ ``betas``), ``adam_epsilon``
    (→ ``eps``), ``optim_target_modules`` and ``optim_args`` from ``training_args``, as
    :func:`optimizer_cls_and_kwargs` does (with transformers' defaults for GaLore/APOLLO); ``betas``/``eps`` are
    passed only to optimizers that take them (not ``SUMO``/``SGDP``), and ``subspace_options`` override them. Weight
    decay goes only to the parameters the Trainer itself would decay (:func:`decay_parameter_names`). The Trainer
    builds its LR scheduler around the optimizer as usual. Under an initialized ``torch.distributed`` process group
    (DDP via ``torchrun``) the optimizer uses the default group, so refreshed bases agree across replicas without any
    extra argument. The Trainer refuses ``optimizers=`` under FSDP: use :func:`optimizer_cls_and_kwargs` there.

    Args:
        model: the (unwrapped) model the Trainer trains; frozen parameters are left out.
        training_args: a ``transformers.TrainingArguments`` (any object with those attributes); ``None`` uses
            TrainingArguments' defaults (lr 5e-5, weight decay 0, betas (0.9, 0.999), eps 1e-8).
        optimizer: ``"SubspaceOptimizer"`` (default), a preset name (``"GaLoreAdamW"``, ``"Fira"``, ``"APOLLO"``,
            … see :data:`gradspace.PRESETS`), one of transformers' names (``"galore_adamw"``, …) or a
            :class:`~gradspace.SubspaceOptimizer` subclass.
        target_modules: which ``nn.Linear`` weights get a subspace: ``"all-linear"`` (output heads excluded), a list of
            module-name patterns, or ``None`` for :func:`gradspace.param_groups`' default. See
            :func:`target_weight_names` for the matching rules and errors (a matched non-``nn.Linear`` module is an
            error here). Unset: ``training_args.optim_target_modules`` with transformers' matching
            (:func:`hf_target_weight_names`), else ``"all-linear"``. Given and different from
            ``optim_target_modules``: this one is used, with a warning.
        rank: subspace rank of the targeted weights: int ≥ 1 or a fraction in (0, 1) (unset: ``optim_args``' rank,
            else 128).
        exclude: module-name patterns never projected (default: output heads for ``"all-linear"``).
        layerwise, per_tensor_clipping: layer-wise updates, as in :func:`optimizer_cls_and_kwargs`.
        verbose: print the optimizer, its hyperparameters and which weights are projected (main process only).
        **subspace_options: the optimizer's own keyword arguments (a preset's ``update_proj_gap``, ``scale``,
            ``proj_type``, …) and any gradspace option (``refresh_every``, ``projector``, ``residual``, ``seed``, …);
            they override ``optim_args``. A gradspace option a preset does not name in its signature is also set on
            the projected param group, so a preset cannot shadow it with its own default.

    Returns:
        The optimizer, with param groups: projected weights (with and without decay) and full-space tensors
        (``projector="identity"``), each carrying ``param_names``.

    Raises:
        ImportError: transformers is not installed (``pip install gradspace[hf]``).
        ValueError: ``target_modules`` matches a non-``nn.Linear`` module, or nothing; unknown optimizer name.
        TypeError: ``optimizer`` is not a gradspace optimizer.

    Examples:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from gradspace.integrations.hf import create_optimizer
        >>> model = torch.nn.ModuleDict({"up": torch.nn.Linear(16, 32), "down": torch.nn.Linear(32, 16),
        ...                              "lm_head": torch.nn.Linear(16, 8)})
        >>> args = SimpleNamespace(learning_rate=1e-3, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8)
        >>> opt = create_optimizer(model, args, "GaLoreAdamW", rank=4, update_proj_gap=50, verbose=False)
        >>> [(g["param_names"], g["projector"], g["weight_decay"]) for g in opt.param_groups]
        [(['up.weight', 'down.weight'], 'svd', 0.1), (['lm_head.weight'], 'identity', 0.1), (['up.bias', 'down.bias', 'lm_head.bias'], 'identity', 0.0)]
    """
    _require_transformers()
    optimizer_cls, kwargs, route = _plan(
        optimizer, training_args, target_modules=target_modules, rank=rank, exclude=exclude, layerwise=layerwise,
        per_tensor_clipping=per_tensor_clipping, verbose=verbose, options=subspace_options,
        explicit_semantics="gradspace", where="create_optimizer")
    route.model = model
    return optimizer_cls(model, gradspace_route=route, **kwargs)


def _make_trainer_class() -> type:
    _require_transformers()
    from transformers import Trainer

    class GradspaceTrainer(Trainer):
        """``transformers.Trainer`` whose ``create_optimizer`` builds a gradspace optimizer (see :func:`optimizer_cls_and_kwargs`).

        Reads lr, weight decay, betas, eps, ``optim_target_modules`` and ``optim_args`` from ``args`` as
        :func:`optimizer_cls_and_kwargs` does; works under accelerate's FSDP2 (the optimizer is built where the
        Trainer builds AdamW). With ``gradspace_layerwise=True`` each weight is updated inside backward
        (:class:`gradspace.LayerwiseStepper`) with gradient accumulation, the LR schedule and exact resume, and the
        logged ``grad_norm`` is the global norm of the gradients the layer-wise step consumed (the stock Trainer
        would log 0: the gradients are gone by the time it looks).

        Args:
            *args, **kwargs: as ``transformers.Trainer``.
            gradspace_optimizer: optimizer class or name (``"SubspaceOptimizer"``, ``"GaLoreAdamW"``,
                ``"galore_adamw"``, …).
            gradspace_target_modules: overrides ``args.optim_target_modules`` (transformers' matching, see
                :func:`hf_target_weight_names`); unset: ``optim_target_modules``, else ``"all-linear"``.
            gradspace_rank: subspace rank (unset: ``optim_args``' rank, else 128).
            gradspace_layerwise: layer-wise updates (needs ``max_grad_norm=0``, or ``per_tensor_clipping`` in
                ``gradspace_options``).
            gradspace_options: extra keyword arguments for :func:`optimizer_cls_and_kwargs` (``update_proj_gap``,
                ``refresh_every``, ``per_tensor_clipping``, ``verbose``, …).

        Examples:
            >>> from gradspace.integrations.hf import GradspaceTrainer  # doctest: +SKIP
            >>> trainer = GradspaceTrainer(model=model, args=args, train_dataset=ds, gradspace_optimizer="Fira",
            ...                            gradspace_rank=64, gradspace_options={"update_proj_gap": 200})  # doctest: +SKIP
        """

        def __init__(
            self,
            *args: Any,
            gradspace_optimizer: str | type = "SubspaceOptimizer",
            gradspace_target_modules: Any = UNSET,
            gradspace_rank: Any = UNSET,
            gradspace_layerwise: bool | None = None,
            gradspace_options: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            self.gradspace_optimizer = gradspace_optimizer
            self.gradspace_kwargs: dict[str, Any] = dict(
                target_modules=gradspace_target_modules, rank=gradspace_rank, layerwise=gradspace_layerwise,
                **(gradspace_options or {}),
            )
            super().__init__(*args, **kwargs)

        def create_optimizer(self, model: nn.Module | None = None) -> Any:
            if self.optimizer is None:
                opt_model = self.model if model is None else model
                cls, kwargs = optimizer_cls_and_kwargs(self.gradspace_optimizer, opt_model, self.args,
                                                       **self.gradspace_kwargs)
                self.optimizer = cls(opt_model, **kwargs)
            return self.optimizer

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            norm = layerwise_grad_norm(self.optimizer) if self.optimizer is not None else None
            if norm is not None and "grad_norm" in logs:
                logs["grad_norm"] = norm
            super().log(logs, *args, **kwargs)

    GradspaceTrainer.__module__ = __name__
    return GradspaceTrainer


def __getattr__(name: str) -> Any:
    # GradspaceTrainer subclasses transformers.Trainer, so it is built on first access (transformers imported then)
    if name == "GradspaceTrainer":
        cls = _make_trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
