"""Hugging Face ``transformers.Trainer`` integration: a gradspace optimizer built from ``TrainingArguments``.

``Trainer(optim="galore_adamw_layerwise", ...)`` (the built-in GaLore/APOLLO path) has known traps: a
non-``nn.Linear`` module that matches ``optim_target_modules`` is "matched but ignored" with a warning, the
layer-wise variants forbid gradient accumulation and DDP, report a zero gradient norm and save an empty optimizer
state (resume loses it), and the anchors' optimizer state holds Python objects that
``torch.load(weights_only=True)`` refuses. Here the optimizer is an ordinary ``torch.optim.Optimizer`` handed to the
Trainer (``optimizers=(opt, None)``), so clipping, ``grad_norm`` logging, gradient accumulation, DDP (the default
process group is used without any argument) and checkpoint resume work as with AdamW.

``transformers`` is imported only when a function is called; importing this module needs only torch.

Examples:
    >>> from transformers import Trainer, TrainingArguments  # doctest: +SKIP
    >>> from gradspace.integrations.hf import create_optimizer  # doctest: +SKIP
    >>> args = TrainingArguments("out", learning_rate=1e-3, weight_decay=0.1, max_steps=100)  # doctest: +SKIP
    >>> opt = create_optimizer(model, args, "GaLoreAdamW", target_modules=["attn", "mlp"], rank=128,
    ...                        update_proj_gap=200, scale=0.25)  # doctest: +SKIP
    >>> Trainer(model=model, args=args, train_dataset=ds, optimizers=(opt, None)).train()  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..optimizer import SubspaceOptimizer
from ..presets import PRESETS
from ..registry import DEFAULTS
from ..routing import param_groups

__all__ = ["create_optimizer", "decay_parameter_names", "target_weight_names", "GradspaceTrainer"]

_INSTALL_HINT = "pip install gradspace[hf]"
#: Output heads kept in full space by ``target_modules="all-linear"`` (as :func:`gradspace.param_groups`).
OUTPUT_HEADS: tuple[str, ...] = ("lm_head", "head", "classifier", "score")


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


def _optimizer_class(optimizer: str | type) -> type[SubspaceOptimizer]:
    if isinstance(optimizer, str):
        choices = {"SubspaceOptimizer": SubspaceOptimizer, **PRESETS}
        if optimizer not in choices:
            raise ValueError(f"optimizer={optimizer!r} is not a gradspace optimizer; choose one of {sorted(choices)} or pass a class.")
        return choices[optimizer]
    if isinstance(optimizer, type) and issubclass(optimizer, SubspaceOptimizer):
        return optimizer
    # a plain torch optimizer would accept the 'rank' group key and silently train everything in full space
    raise TypeError(f"optimizer must be a gradspace optimizer class (a SubspaceOptimizer subclass) or its name, got {optimizer!r}.")


def create_optimizer(
    model: nn.Module,
    training_args: Any = None,
    optimizer: str | type = "SubspaceOptimizer",
    target_modules: str | Sequence[str] | None = "all-linear",
    rank: int | float = 128,
    *,
    exclude: Sequence[str] | None = None,
    verbose: bool = True,
    **subspace_options: Any,
) -> SubspaceOptimizer:
    """Build a gradspace optimizer for ``transformers.Trainer(model, args, optimizers=(opt, None))``.

    Reads ``learning_rate``, ``weight_decay``, ``adam_beta1``/``adam_beta2`` (→ ``betas``) and ``adam_epsilon``
    (→ ``eps``) from ``training_args``; ``betas``/``eps`` are passed only to optimizers that take them (not
    ``SUMO``/``SGDP``), and ``subspace_options`` override them. Weight decay goes only to the parameters the Trainer
    itself would decay (:func:`decay_parameter_names`). The Trainer builds its LR scheduler around the optimizer as
    usual. Under an initialized ``torch.distributed`` process group (DDP via ``torchrun``) the optimizer uses the
    default group, so refreshed bases agree across replicas without any extra argument.

    Args:
        model: the (unwrapped) model the Trainer trains; frozen parameters are left out.
        training_args: a ``transformers.TrainingArguments`` (any object with those attributes); ``None`` uses
            TrainingArguments' defaults (lr 5e-5, weight decay 0, betas (0.9, 0.999), eps 1e-8). If its
            ``optim_target_modules`` is set it must equal ``target_modules`` (else ``ValueError``).
        optimizer: ``"SubspaceOptimizer"`` (default), a preset name (``"GaLoreAdamW"``, ``"Fira"``, ``"APOLLO"``,
            … see :data:`gradspace.PRESETS`) or a :class:`~gradspace.SubspaceOptimizer` subclass.
        target_modules: which ``nn.Linear`` weights get a subspace, as ``TrainingArguments.optim_target_modules``:
            ``"all-linear"`` (default; output heads excluded), a list of module-name patterns, or ``None`` for
            :func:`gradspace.param_groups`' default. See :func:`target_weight_names` for the matching rules and errors.
        rank: subspace rank of the targeted weights: int ≥ 1 or a fraction in (0, 1).
        exclude: module-name patterns never projected (default: output heads for ``"all-linear"``).
        verbose: print the optimizer, its hyperparameters and which weights are projected.
        **subspace_options: the optimizer's own keyword arguments (a preset's ``update_proj_gap``, ``scale``,
            ``proj_type``, …) and any gradspace option (``refresh_every``, ``projector``, ``residual``, ``seed``, …).
            A gradspace option a preset does not name in its signature is also set on the projected param group, so
            a preset cannot shadow it with its own default.

    Returns:
        The optimizer, with param groups: projected weights (with and without decay) and full-space tensors
        (``projector="identity"``), each carrying ``param_names``.

    Raises:
        ImportError: transformers is not installed (``pip install gradspace[hf]``).
        ValueError: ``target_modules`` matches a non-``nn.Linear`` module, or nothing, or differs from
            ``training_args.optim_target_modules``; unknown optimizer name.
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
    cls = _optimizer_class(optimizer)
    fixed = sorted({"lr", "weight_decay", "params"} & set(subspace_options))
    if fixed:
        raise TypeError(f"{fixed} come from training_args (learning_rate, weight_decay) and the routing; "
                        "set them in TrainingArguments, not as create_optimizer keywords.")
    lr = float(getattr(training_args, "learning_rate", 5e-5))
    wd = float(getattr(training_args, "weight_decay", 0.0))
    betas = (float(getattr(training_args, "adam_beta1", 0.9)), float(getattr(training_args, "adam_beta2", 0.999)))
    eps = float(getattr(training_args, "adam_epsilon", 1e-8))

    from_args = getattr(training_args, "optim_target_modules", None)
    if from_args is not None and from_args != target_modules:
        raise ValueError(
            f"training_args.optim_target_modules={from_args!r} differs from target_modules={target_modules!r}. "
            "create_optimizer routes by target_modules; pass target_modules=training_args.optim_target_modules "
            "(or leave optim_target_modules unset) so the two cannot disagree."
        )
    chosen = set(target_weight_names(model, target_modules, exclude=exclude, rank=rank))
    decay = decay_parameter_names(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    signature = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {}
    if "betas" in signature or cls is SubspaceOptimizer:
        kwargs["betas"] = betas
    if "eps" in signature or cls is SubspaceOptimizer:
        kwargs["eps"] = eps
    kwargs.update(subspace_options)
    kwargs["weight_decay"] = wd
    # a gradspace option the preset does not name in its signature would be shadowed by the value the preset
    # translates into each projected group (e.g. refresh_every by GaLoreAdamW's update_proj_gap): set it there too
    group_options = {k: v for k, v in subspace_options.items() if k in DEFAULTS and k not in signature and k != "rank"}

    groups: list[dict[str, Any]] = []
    for projected in (True, False):
        for decays in ((True, False) if wd else (None,)):
            params = [(n, p) for n, p in named
                      if (n in chosen) == projected and (decays is None or (n in decay) == decays)]
            if not params:
                continue
            group: dict[str, Any] = {"params": params, "weight_decay": wd if decays or decays is None else 0.0}
            if projected:
                group.update(group_options, rank=rank)
            else:
                group["projector"] = "identity"
            groups.append(group)
    opt = cls(groups, lr=lr, **kwargs)

    projected_names = [n for g in opt.param_groups if g["projector"] != "identity" for n in g.get("param_names", [])]
    if chosen and not projected_names:
        warnings.warn(
            f"{cls.__name__} projects none of the {len(chosen)} targeted weight(s) (it runs every parameter in full "
            "space); choose a subspace optimizer or preset.",
            UserWarning,
            stacklevel=2,
        )
    if verbose:
        shown = {k: kwargs[k] for k in ("betas", "eps") if k in kwargs}
        n_decay = sum(len(g["params"]) for g in opt.param_groups if g["weight_decay"])
        print(
            f"gradspace.integrations.hf: {cls.__name__}(lr={lr:g}, "
            + "".join(f"{k}={v}, " for k, v in shown.items())
            + f"weight_decay={wd:g} on {n_decay} of {len(named)} tensors"
            + "".join(f", {k}={v!r}" for k, v in subspace_options.items() if k not in shown)
            + ")"
        )
        print(
            f"gradspace.integrations.hf: {len(projected_names)} nn.Linear weight(s) get a rank-{rank} subspace "
            f"(target_modules={target_modules!r}): {_listing(projected_names)}"
        )
        full = [n for n, _ in named if n not in set(projected_names)]
        print(f"gradspace.integrations.hf: {len(full)} tensor(s) in full space: {_listing(full)}")
    return opt


def _make_trainer_class() -> type:
    _require_transformers()
    from transformers import Trainer

    class GradspaceTrainer(Trainer):
        """``transformers.Trainer`` whose ``create_optimizer`` builds a gradspace optimizer (see :func:`create_optimizer`).

        Args:
            *args, **kwargs: as ``transformers.Trainer``.
            gradspace_optimizer: optimizer class or name (``"SubspaceOptimizer"``, ``"GaLoreAdamW"``, …).
            gradspace_target_modules: ``"all-linear"``, a list of module-name patterns, or ``None``.
            gradspace_rank: subspace rank.
            gradspace_options: extra keyword arguments for :func:`create_optimizer` (``refresh_every``, …).

        Examples:
            >>> from gradspace.integrations.hf import GradspaceTrainer  # doctest: +SKIP
            >>> trainer = GradspaceTrainer(model=model, args=args, train_dataset=ds, gradspace_optimizer="Fira",
            ...                            gradspace_rank=64, gradspace_options={"update_proj_gap": 200})  # doctest: +SKIP
        """

        def __init__(
            self,
            *args: Any,
            gradspace_optimizer: str | type = "SubspaceOptimizer",
            gradspace_target_modules: str | Sequence[str] | None = "all-linear",
            gradspace_rank: int | float = 128,
            gradspace_options: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            self.gradspace_kwargs: dict[str, Any] = dict(
                optimizer=gradspace_optimizer, target_modules=gradspace_target_modules, rank=gradspace_rank,
                **(gradspace_options or {}),
            )
            super().__init__(*args, **kwargs)

        def create_optimizer(self, model: nn.Module | None = None) -> Any:
            if self.optimizer is None:
                self.optimizer = create_optimizer(self.model if model is None else model, self.args, **self.gradspace_kwargs)
            return self.optimizer

    GradspaceTrainer.__module__ = __name__
    return GradspaceTrainer


def __getattr__(name: str) -> Any:
    # GradspaceTrainer subclasses transformers.Trainer, so it is built on first access (transformers imported then)
    if name == "GradspaceTrainer":
        cls = _make_trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
