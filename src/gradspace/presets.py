"""Named optimizers: each a pinned subclass of :class:`SubspaceOptimizer` that speaks its anchor's argument names.

Like ``torch.optim.AdamW`` pins one flag of ``Adam``, each preset pins the projector, rule, residual and refresh
policy of a published method (class attributes ``pins`` for projected groups and ``defaults_`` for every group) and
accepts the anchor's own argument and param-group names (``update_proj_gap``, ``scale``, ``proj_type``, …). One table,
:data:`ANCHOR_NAMES`, translates every anchor name into gradspace options, for the constructor, for groups and for
:meth:`~torch.optim.Optimizer.add_param_group` alike; an error names the argument the caller passed. As in the
anchors, only groups that carry ``rank`` (or the anchor's own marker, or every group when ``rank=`` is passed to the
constructor) get a subspace; the others run the preset's rule in full space. Native gradspace options are accepted in
groups and as keyword arguments too (precedence: a group's own keys, then the constructor's gradspace options, then
the anchor's arguments, then the preset's pins).

| preset | projector | rule | on_refresh | residual | anchor defaults kept |
|---|---|---|---|---|---|
| GaLoreAdamW | svd | adam (HF bias correction) | keep | drop | eps 1e-6, T 200, scale 1 |
| OnlineSubspaceAdamW | online_pca (AdamW on P, lr 1/T × schedule) | adam (HF) | keep | drop | eps 1e-6, T 200 |
| FloraAdam | random Gaussian | adam | rotate | drop | κ = 1000 |
| GoLore | svd for rand_ratio·total_steps, then random Stiefel | adam (HF) | rotate (first moment) | drop | T 200, rand_ratio 0.8 |
| APOLLO | random Gaussian (or svd) | adam (HF) | keep | apollo, channel, √scale, γ 1.01 | eps 1e-6, T 200 |
| APOLLOMini | random Gaussian | adam (HF) | keep | apollo, tensor, √128 | rank 1 |
| Fira | svd | adam (HF) | keep | fira, channel, γ 1.01 | eps 1e-6, T 200 |
| FRUGAL | svd (or random Stiefel) | adam | reset | sign (or sgd/drop) | density 0.25, T 200, wd 0.01 |
| LDAdam | power (1 warm power step on ρ·m̂ + (1−ρ)·G, SVD first), T = 1 | adam | rotate m and v | error_feedback (+ moment error) | betas (0.908, 0.99), ρ 0.908 |
| SUMO | randomized | orthogonal (exact SVD) | rotate | sgd | momentum 0.95, T 200 |
| AdamP / SGDP | identity | adam / sgdm | — | — | radial projection δ 0.1, wd_ratio 0.1 |
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from .options import OptionError, OptionTypeError
from .optimizer import ParamsT, SubspaceOptimizer, route
from .projectors.power import PowerIteration
from .registry import PROJECTORS, register_projector

if "power" not in PROJECTORS:  # LDAdam's projector, registered like any user component
    register_projector(PowerIteration)

Translate = Callable[[Any, dict[str, Any]], dict[str, Any]]

_SIDES = {"std": "smaller", "reverse_std": "larger", "left": "left", "right": "right"}


def _choice(name: str, value: Any, table: dict[str, Any]) -> Any:
    if value not in table:
        raise OptionError(name, value, f"{name}={value!r} is not supported; allowed: {sorted(table)}.")
    return table[value]


def _side(name: str) -> Translate:
    def translate(v: Any, a: dict[str, Any]) -> dict[str, Any]:
        if v == "full":
            raise OptionError(name, v, f"{name}='full' (galore-torch's two-sided projection Uᵀ G V) is not "
                              f"implemented; allowed: {sorted(_SIDES)}.")
        return {"side": _choice(name, v, _SIDES)}
    return translate


def _same(key: str) -> Translate:
    return lambda v, a: {key: v}


def _ignored(note: str) -> Translate:
    def translate(v: Any, a: dict[str, Any]) -> dict[str, Any]:
        return {}
    translate.note = note  # type: ignore[attr-defined]
    return translate


def _in_range(name: str, lo: float, hi: float, key: str, lo_open: bool = False, hi_open: bool = False) -> Translate:
    def translate(v: Any, a: dict[str, Any]) -> dict[str, Any]:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or (v <= lo if lo_open else v < lo) or \
                (v >= hi if hi_open else v > hi):
            raise OptionError(name, v, f"{name}={v!r} must be in {'(' if lo_open else '['}{lo}, {hi}"
                                       f"{')' if hi_open else ']'}.")
        return {key: v}
    return translate


def _apollo_scale(v: Any, a: dict[str, Any]) -> dict[str, Any]:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
        raise OptionError("scale", v, f"scale={v!r} must be >= 0 (it enters as sqrt(scale)).")
    return {"scale": math.sqrt(v)}


def _golore_warmup(v: Any, a: dict[str, Any]) -> dict[str, Any]:
    ratio, total = a.get("rand_ratio", 0.8), a.get("total_steps")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise OptionError("rand_ratio", ratio, f"rand_ratio={ratio!r} must be in [0, 1].")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise OptionError("total_steps", total, f"total_steps={total!r} must be None or an int >= 0.")
    return {"svd_warmup_steps": 0 if total is None else int(ratio * total)}


def _frugal_kind(v: Any, a: dict[str, Any]) -> dict[str, Any]:
    kinds = {"svd": ("svd", "gaussian"), "random": ("random", "stiefel")}
    projector, dist = _choice("proj_type", v, kinds)
    return {"projector": projector, "random_dist": dist}


def _frugal_lr_scales(v: Any, a: dict[str, Any]) -> dict[str, Any]:
    outer, inner = a.get("proj_params_lr_scale", 1.0), a.get("inactive_lr_scale", 1.0)
    return {"scale": outer, "residual_lr_scale": outer * inner}


def _sgdp_decay(v: Any, a: dict[str, Any]) -> dict[str, Any]:
    momentum = a.get("momentum", 0.0)
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
        raise OptionError("momentum", momentum, f"momentum={momentum!r} must be in [0, 1).")
    return {"weight_decay": v / (1.0 - momentum), "momentum": momentum}


#: anchor argument name → translation into gradspace options; ``(preset, name)`` keys override for one preset.
ANCHOR_NAMES: dict[str | tuple[str, str], Translate] = {
    "update_proj_gap": _same("refresh_every"),
    "proj_type": _side("proj_type"),
    "scale": _same("scale"),
    ("APOLLO", "scale"): _apollo_scale,
    ("APOLLOMini", "scale"): _apollo_scale,
    "alpha": _same("scale"),
    "correct_bias": lambda v, a: {"bias_correction": "hf" if v else "none"},
    "proj": lambda v, a: {"projector": _choice("proj", v, {"random": "random", "svd": "svd"})},
    "scale_type": lambda v, a: {"residual_scale_type": _choice("scale_type", v, {"channel": "channel",
                                                                                 "tensor": "tensor"})},
    "disable_nl": lambda v, a: {"limiter_gamma": 0.0 if v else 1.01},
    "kappa": _same("refresh_every"),
    "rand_ratio": _golore_warmup,
    "total_steps": _golore_warmup,
    "density": _in_range("density", 0.0, 1.0, "rank", lo_open=True, hi_open=True),
    "update_gap": _same("refresh_every"),
    "proj_side": _side("proj_side"),
    ("FRUGAL", "proj_type"): _frugal_kind,
    "reset_statistics": lambda v, a: {"on_refresh": "reset" if v else "keep"},
    "inactive_update_rule": lambda v, a: {"residual": _choice("inactive_update_rule", v,
                                                               {"sign_sgd": "sign", "sgd": "sgd", "no": "drop"})},
    "inactive_lr_scale": _frugal_lr_scales,
    "proj_params_lr_scale": _frugal_lr_scales,
    "error_feedback": lambda v, a: {"residual": "error_feedback" if v else "drop"},
    ("LDAdam", "error_feedback"): lambda v, a: {"residual": "error_feedback" if v else "drop",
                                                "error_feedback_moments": bool(v)},
    "rho": _in_range("rho", 0.0, 1.0, "power_blend", hi_open=True),
    "proj_method": lambda v, a: {"power_method": _choice("proj_method", v, {"power_iteration": "power_iteration",
                                                                            "svd": "svd"})},
    "delta": _same("radial_delta"),
    "wd_ratio": _same("radial_wd_ratio"),
    ("AdamP", "eps"): lambda v, a: {"eps": v, "radial_eps": v},
    ("SGDP", "eps"): lambda v, a: {"radial_eps": v},
    ("SGDP", "weight_decay"): _sgdp_decay,
    ("SGDP", "momentum"): _sgdp_decay,
    "no_deprecation_warning": _ignored("transformers' AdamW flag; nothing is deprecated here"),
    "scale_front": _ignored("the norm-growth limiter is scale-invariant, so scaling before or after it gives the "
                            "same update"),
}


class Preset(SubspaceOptimizer):
    """A pinned :class:`SubspaceOptimizer`: ``pins`` (options of projected groups), ``defaults_`` (options of every
    group), ``anchor`` (the anchor's argument names with their defaults), ``positional`` (the anchor's positional
    arguments after ``lr``), ``markers`` (the anchor's group flags for a subspace)."""

    _routes_params = False
    pins: ClassVar[dict[str, Any]] = {}
    defaults_: ClassVar[dict[str, Any]] = {}
    anchor: ClassVar[dict[str, Any]] = {}
    positional: ClassVar[tuple[str, ...]] = ("betas", "eps", "weight_decay")
    markers: ClassVar[tuple[str, ...]] = ()
    #: anchor names that apply to every group (the rest only to projected groups)
    _GLOBAL: ClassVar[frozenset[str]] = frozenset({"betas", "eps", "weight_decay", "correct_bias", "momentum",
                                                   "dampening", "nesterov", "delta", "wd_ratio", "seed"})

    def __init__(self, params: ParamsT, lr: float = 1e-3, *args: Any, rank: int | float | None = None,
                 **kwargs: Any) -> None:
        name = type(self).__name__
        if len(args) > len(self.positional):
            raise TypeError(f"{name} takes at most {2 + len(self.positional)} positional arguments (params, lr, "
                            f"{', '.join(self.positional)}).")
        for key, value in zip(self.positional, args):
            if key in kwargs:
                raise TypeError(f"{name} got multiple values for argument {key!r}")
            kwargs[key] = value
        params = route(params, rank, name)
        anchor = {k: kwargs.pop(k) for k in list(kwargs) if k in self.anchor}
        self._anchor_args = {**self.anchor, **anchor}
        self._native = dict(kwargs)
        self._ctor_rank = rank
        self._any_subspace = False
        self._spelled: dict[str, tuple[str, Any]] = {}
        everywhere = self._translate({k: v for k, v in self._anchor_args.items() if k in self._GLOBAL})
        defaults = {**self.defaults_, **everywhere, **kwargs}
        with self._spelling():
            super().__init__(params, lr, **defaults)
        if not self._any_subspace and self.pins:  # AdamP/SGDP pin no subspace at all
            warnings.warn(
                f"{name}: no param group has a 'rank' (or the anchor's marker), so every parameter runs the rule in "
                "full space, as the anchor does; pass rank=... or groups from gradspace.param_groups(model, rank=...).",
                UserWarning,
                stacklevel=2,
            )

    def _translate(self, anchor: dict[str, Any]) -> dict[str, Any]:
        """gradspace options for these anchor arguments (through :data:`ANCHOR_NAMES`)."""
        name = type(self).__name__
        out: dict[str, Any] = {}
        merged = {**self._anchor_args, **anchor} if hasattr(self, "_anchor_args") else dict(anchor)
        for key, value in anchor.items():
            fn = ANCHOR_NAMES.get((name, key)) or ANCHOR_NAMES.get(key)
            if fn is None:
                out[key] = value
                continue
            produced = fn(value, merged)
            for option in produced:
                self._spelled_as(option, key, value)
            out.update(produced)
        return out

    def _spelled_as(self, option: str, key: str, value: Any) -> None:
        if option != key and hasattr(self, "_spelled"):
            self._spelled[option] = (key, value)

    @contextmanager
    def _spelling(self) -> Iterator[None]:
        """Re-word an option error in the anchor's spelling of the argument the caller passed."""
        try:
            yield
        except (OptionError, OptionTypeError) as err:
            key = err.key.split("[")[0]
            if key not in self._spelled:
                raise
            anchor, value = self._spelled[key]
            raise type(err)(anchor, value, f"{anchor}={value!r}: {err} (as gradspace's {err.key})") from err

    def _group_options(self, param_group: dict[str, Any]) -> dict[str, Any]:
        group = dict(param_group)
        flagged = any(bool(group.pop(m, False)) for m in self.markers)
        anchor = {k: group.pop(k) for k in list(group) if k in self.anchor}
        explicit_identity = group.get("projector") == "identity"
        if ("rank" in group or flagged or self._ctor_rank is not None) and not explicit_identity:
            self._any_subspace = True
            local = {k: v for k, v in self._anchor_args.items() if k not in self._GLOBAL}
            translated = self._translate({**local, **anchor})
            out = {k: v for k, v in {**self.pins, **translated}.items() if k not in self._native}
            out.update(group)
            if "rank" not in out:
                if self._ctor_rank is None:
                    raise ValueError(f"{type(self).__name__}: a group is marked for a subspace ({self.markers}) but "
                                     "has no rank.")
                out["rank"] = self._ctor_rank
            return out
        out = {**self._translate({k: v for k, v in anchor.items() if k in self._GLOBAL}), **group}
        out["projector"] = "identity"
        return out

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, translated exactly as the constructor translates its groups (anchor names included)."""
        with self._spelling():
            super().add_param_group(param_group)




class GaLoreAdamW(Preset):
    """GaLore: Adam moments in the top-r SVD subspace of G, refreshed every T steps (Zhao et al. 2024, arXiv:2403.03507).

    Drop-in for ``galore_torch.GaLoreAdamW``: groups carrying ``rank`` (with ``update_proj_gap``, ``scale``,
    ``proj_type``) get GaLore, the others plain AdamW; bias correction and eps as the anchor (``step_size = lr·√bc2/bc1``,
    ``ε`` outside the square root's correction). Weight decay is applied before the update (the anchor applies it
    after, an O(lr²·wd) difference).

    Examples:
        >>> import torch, gradspace
        >>> model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Linear(64, 8))
        >>> groups = [{"params": [model[0].weight], "rank": 4, "update_proj_gap": 50, "scale": 0.25, "proj_type": "std"},
        ...           {"params": [model[0].bias, model[1].weight, model[1].bias]}]
        >>> opt = gradspace.GaLoreAdamW(groups, lr=1e-2)
    """

    pins = {"projector": "svd", "residual": "drop", "on_refresh": "keep"}
    defaults_ = {"rule": "adam", "bias_correction": "hf", "eps": 1e-6}
    anchor = {"betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0, "correct_bias": True, "update_proj_gap": 200,
              "scale": 1.0, "proj_type": "std", "no_deprecation_warning": False}
    positional = ("betas", "eps", "weight_decay", "correct_bias")


class OnlineSubspaceAdamW(GaLoreAdamW):
    """Online Subspace Descent: the basis P is trained by AdamW on the PCA loss ‖Ĝ PᵀP − Ĝ‖² at every step (Liang et al.
    2024, arXiv:2408.12857; ``--proj_type continuous`` of kyleliang919/Online-Subspace-Descent).

    The first basis is the exact SVD of G; every later G_t is projected with the current P_t, then P takes one
    ``torch.optim.AdamW`` step (its defaults) on the loss of Ĝ_t = G_t/‖G_t‖ at lr ``1/update_proj_gap`` × (the
    group's lr / its ``initial_lr``, as the anchor scales it by the lr schedule); P is not re-orthonormalized, as in
    the anchor. Adam (HF bias correction) on ``down(G)``; outside dropped. ``pca_method="oja"`` instead takes one
    re-orthonormalized Oja step per iteration with the current gradient (the earlier behaviour of this preset).
    Weight decay is applied before the update (the anchor: after).
    """

    pins = {**GaLoreAdamW.pins, "projector": "online_pca", "pca_method": "adamw"}


class FloraAdam(Preset):
    """Flora-style Adam: moments in a seeded Gaussian subspace P ~ N(0, 1/r), re-drawn every κ steps with the first
    moment transported M ← M (P_newᵀ P_old)ᵀ (Hao et al. 2024, "Flora", arXiv:2402.03293).

    The basis is never stored (seed + counter). **This is not Flora's optimizer** (BorealisAI/flora-opt
    ``flora_opt/optimizers/torch/flora.py``); it differs in (1) the update: Flora's is full rank — Adafactor's
    factored second moment (row/column EMAs of G², β2ₜ = 1 − t^−0.8) preconditions the whole G, and only the first
    moment of that preconditioned U is compressed, ``Upd = (1−β1)·U + β1·up(M)``, with RMS clipping and relative step
    scaling — while here the out-of-subspace gradient is dropped (``residual="drop"``); (2) the second moment: Flora's
    is full rank and never re-drawn, here Adam's v lives in the subspace and is *kept*, untransported, at a re-draw
    (``rotate_second_moment=True`` transports it as LDAdam does). Flora's own transport of M at a re-draw, M ←
    down_new(up_old(M)), is reproduced exactly. No option reproduces the Adafactor update (gradspace has no Adafactor
    rule).
    """

    pins = {"projector": "random", "random_dist": "gaussian", "on_refresh": "rotate", "residual": "drop"}
    defaults_ = {"rule": "adam"}
    anchor = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "kappa": 1000}


class GoLore(Preset):
    """GoLore: GaLore's SVD subspace for the first ``rand_ratio`` of training, then uniform random (Stiefel) subspaces,
    with the first moment transported at each refresh (He et al. 2025, "Subspace Optimization for LLMs with
    Convergence Guarantees", arXiv:2410.11289).

    ``total_steps`` sets the switch step ``rand_ratio · total_steps``; without it every subspace is random.
    """

    pins = {"projector": "random", "random_dist": "stiefel", "on_refresh": "rotate", "residual": "drop"}
    defaults_ = {"rule": "adam", "bias_correction": "hf", "eps": 1e-6}
    anchor = {"betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0, "correct_bias": True, "update_proj_gap": 200,
              "scale": 1.0, "proj_type": "std", "rand_ratio": 0.8, "total_steps": None}
    positional = ("betas", "eps", "weight_decay", "correct_bias")


class APOLLO(Preset):
    """APOLLO: U = √α · limit(G ⊙ ‖Ñ‖/‖R‖), the per-channel scale estimated by Adam in a random subspace
    R = G P, P ~ N(0, 1/r) (Zhu et al. 2025, "APOLLO: SGD-like Memory, AdamW-level Performance", arXiv:2412.05270).

    Drop-in for ``apollo_torch.APOLLOAdamW`` (groups with ``rank``, ``proj`` ("random" | "svd"), ``scale_type``
    ("channel" | "tensor"), ``scale``, ``update_proj_gap``, ``proj_type``). As in the anchor, ``scale`` enters as
    √scale and the norm-growth limiter uses γ = 1.01 (``disable_nl=True`` turns it off). The random basis is
    regenerated from its seed, not stored (so ``proj="random"`` draws differ from the anchor's generator stream).
    Weight decay is applied before the update (the anchor applies it after, an O(lr²·wd) difference).
    """

    pins = {"projector": "random", "random_dist": "gaussian", "residual": "apollo", "on_refresh": "keep",
            "residual_scale_type": "channel", "limiter_gamma": 1.01}
    defaults_ = {"rule": "adam", "bias_correction": "hf", "eps": 1e-6}
    anchor = {"betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0, "correct_bias": True, "proj": "random",
              "scale_type": "channel", "scale": 1.0, "update_proj_gap": 200, "proj_type": "std", "disable_nl": False,
              "scale_front": False}
    positional = ("betas", "eps", "weight_decay", "correct_bias")


class APOLLOMini(APOLLO):
    """APOLLO-Mini: APOLLO with one tensor-wise scale, α = 128 (applied as √128), used at rank 1 (Zhu et al. 2025).

    Near-zero optimizer state for projected weights: two 1 × max(m, n) moments and a seed. As with every preset, the
    groups that carry ``rank`` (``gradspace.param_groups(model, rank=1)``) or a constructor ``rank=1`` are projected.
    """

    anchor = {**APOLLO.anchor, "scale_type": "tensor", "scale": 128.0}


class Fira(Preset):
    """Fira: W ← W − lr·(α·up(ψ(R)) + limit(φ ⊙ (G − PPᵀG))), φ = ‖ψ(R)‖/‖R‖ per channel (Chen et al. 2024,
    "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?", arXiv:2410.01623).

    Drop-in for ``fira.FiraAdamW`` (groups with ``rank``, ``update_proj_gap``, ``alpha``, ``proj_type``). Follows the
    paper's residual ``G − PPᵀG``; the anchor's code subtracts ``α·PPᵀG``, leaving (1 − α)·PPᵀG in its residual
    (with ``alpha=1`` the two agree): ``fira_residual="code"`` reproduces the code (and published runs with α ≠ 1).
    Weight decay is applied before the update (the anchor: after).
    """

    pins = {"projector": "svd", "residual": "fira", "on_refresh": "keep", "residual_scale_type": "channel",
            "limiter_gamma": 1.01}
    defaults_ = {"rule": "adam", "bias_correction": "hf", "eps": 1e-6}
    anchor = {"betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0, "correct_bias": True, "update_proj_gap": 200,
              "alpha": 1.0, "proj_type": "std"}
    positional = ("betas", "eps", "weight_decay", "correct_bias")


FiraAdamW = Fira
APOLLOAdamW = APOLLO


class FRUGAL(Preset):
    """FRUGAL: Adam in a density-ρ subspace with moments reset at each refresh, state-free signSGD on the rest
    (Zmushko et al. 2025, "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead", arXiv:2411.07837).

    W ← W(1 − lr·wd) − lr·s·up(Adam(down(G))) − lr·s·ρ_in·sign(G − up(down(G))), with ``s`` =
    ``proj_params_lr_scale`` and ``ρ_in`` = ``inactive_lr_scale``. Groups flagged ``is_proj_params=True`` (the anchor's
    marker) or carrying ``rank`` get the subspace; ``density`` becomes the fractional rank.
    """

    pins = {"projector": "svd", "random_dist": "gaussian", "residual": "sign", "on_refresh": "reset"}
    defaults_ = {"rule": "adam", "weight_decay": 0.01}
    anchor = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "density": 0.25, "update_gap": 200,
              "proj_type": "svd", "proj_side": "std", "reset_statistics": True, "inactive_update_rule": "sign_sgd",
              "inactive_lr_scale": 1.0, "proj_params_lr_scale": 1.0}
    markers = ("is_proj_params",)


class LDAdam(Preset):
    """LDAdam: Adam in a subspace tracked every step by one warm-started block power iteration on the blend
    ρ·up(m̂) + (1 − ρ)·G, both moments transported projection-aware, with generalized error feedback (Robert et al.
    2025, "LDAdam: Adaptive Optimization from Low-Dimensional Gradient Statistics", arXiv:2410.16103).

    Drop-in for ``ldadamw_torch.LDAdamW`` (IST-DASLab/LDAdam): groups flagged ``enable_lowrank=True`` (the anchor's
    marker) or carrying ``rank`` get the subspace; ``rho``, ``proj_type``, ``proj_method`` (``"power_iteration"`` |
    ``"svd"``) and ``error_feedback`` as the anchor. The first basis is the exact SVD of G; then Q ← qr(BᵀBQ_prev)
    (the ``power`` projector, no Rayleigh–Ritz rotation, so Adam's v is transported into exactly the anchor's
    coordinates); m ← m Q_prevᵀQ, v by LDAdam's projection-aware rule; ``error_feedback=True`` (default, as the
    anchor) feeds back both G − QQᵀG and the first moment's compression error, from an fp32 buffer in the optimizer
    state (the anchor keeps it in ``p.grad``, outside its state dict). Weight decay is applied before the update
    (the anchor: also before).
    """

    pins = {"projector": "power", "refresh_every": 1, "on_refresh": "rotate", "residual": "error_feedback",
            "error_feedback_moments": True, "power_blend": 0.908}
    defaults_ = {"rule": "adam", "rotate_second_moment": True, "betas": (0.908, 0.99)}
    anchor = {"betas": (0.908, 0.99), "eps": 1e-8, "weight_decay": 0.0, "proj_type": "std", "error_feedback": True,
              "rho": 0.908, "proj_method": "power_iteration"}
    markers = ("enable_lowrank",)


class SUMO(Preset):
    """SUMO: exactly orthogonalized momentum in a randomized-SVD subspace, SGD on the rest (Refael et al. 2025,
    "SUMO: Subspace-Aware Moment-Orthogonalization", arXiv:2505.24749).

    M ← μM + QᵀG (transported M ← (Q_newᵀQ_old)M at refresh); W ← W − lr·(Q·orth(M)·√max(1, rows/r) + (G − QQᵀG)).

    Checked against the paper's Algorithm 1 only: the official code (guy120494/SUMO, linked from the paper) could not
    be retrieved, so nothing here is verified against it. What is SUMO: a randomized-SVD subspace refreshed every
    ``update_proj_gap`` steps, one momentum rotated into each new subspace, exact SVD orthogonalization U Vᵀ of the
    momentum (numerical null space mapped to 0), plain SGD on the orthogonal complement, Moonlight-style RMS scaling.
    What is not: the paper's norm-growth limiter on the orthogonalized update (γ = 1.1) is not applied; the momentum
    is an EMA with (1 − μ) on the new gradient (the paper adds Ĝ unscaled: identical after the scale-invariant
    orthogonalization, different only in the rotated state's scale); the randomized SVD is gradspace's (one warm power
    step, Rayleigh–Ritz), not the paper's exact truncated randomized SVD parameters.
    """

    pins = {"projector": "randomized", "on_refresh": "rotate", "residual": "sgd"}
    defaults_ = {"rule": "orthogonal", "ortho_method": "svd", "momentum": 0.95}
    anchor = {"momentum": 0.95, "weight_decay": 0.0, "update_proj_gap": 200, "scale": 1.0, "proj_type": "std"}
    positional = ("momentum", "weight_decay")


class AdamP(Preset):
    """AdamP: Adam whose update loses its radial component on scale-invariant weights (Heo et al. 2021, "AdamP:
    Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights", arXiv:2006.08217).

    If |cos(G, W)| < δ/√dim per output channel (else per layer), U ← U − Ŵ(Ŵ·U) and weight decay is multiplied by
    ``wd_ratio``. Full-space Adam otherwise; no subspace.
    """

    defaults_ = {"rule": "adam", "projector": "identity", "radial_projection": True}
    anchor = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "delta": 0.1, "wd_ratio": 0.1,
              "nesterov": False}
    positional = ("betas", "eps", "weight_decay", "delta", "wd_ratio", "nesterov")

    def __init__(self, params: ParamsT, lr: float = 1e-3, *args: Any, **kwargs: Any) -> None:
        if (args[5] if len(args) > 5 else kwargs.get("nesterov", False)):
            raise OptionError("nesterov", True, "AdamP(nesterov=True) is not implemented; use nesterov=False.")
        kwargs.pop("nesterov", None)
        super().__init__(params, lr, *args[:5], **kwargs)


class SGDP(Preset):
    """SGDP: SGD with momentum whose update loses its radial component on scale-invariant weights (Heo et al. 2021).

    Weight decay follows the anchor: ``W ← W(1 − lr·wd·wd_ratio/(1 − μ))`` (the radial ratio only when projected).
    Without Nesterov the stored momentum buffer loses its radial component too, as in clovaai/AdamP's ``sgdp.py``
    (its ``d_p`` is the buffer, projected in place).
    The momentum buffer starts at the first gradient as in ``torch.optim.SGD``; the anchor starts it at
    ``(1 − dampening)·g``, so the two differ when ``dampening > 0``.
    """

    defaults_ = {"rule": "sgdm", "projector": "identity", "radial_projection": True, "momentum": 0.0}
    anchor = {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False, "eps": 1e-8, "delta": 0.1,
              "wd_ratio": 0.1}
    positional = ("momentum", "dampening", "weight_decay", "nesterov", "eps", "delta", "wd_ratio")


PRESETS: dict[str, type[SubspaceOptimizer]] = {
    cls.__name__: cls
    for cls in (GaLoreAdamW, OnlineSubspaceAdamW, FloraAdam, GoLore, APOLLO, APOLLOMini, Fira, FRUGAL, LDAdam, SUMO,
                AdamP, SGDP)
}
