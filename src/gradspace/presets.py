"""Named optimizers: each a thin configuration of :class:`SubspaceOptimizer` with its anchor's argument names.

Like ``torch.optim.AdamW`` pins one flag of ``Adam``, each preset pins the projector, rule, residual and refresh
policy of a published method and translates the anchor's argument and param-group names (``rank``,
``update_proj_gap``, ``scale``, ``proj_type``, …). As in the anchors, only groups that carry ``rank`` (or the
anchor's own marker, or every group when ``rank=`` is passed to the constructor) get a subspace; the others run the
preset's rule in full space. Native gradspace options are accepted in groups and as keyword arguments too.

| preset | projector | rule | on_refresh | residual | anchor defaults kept |
|---|---|---|---|---|---|
| GaLoreAdamW | svd | adam (HF bias correction) | keep | drop | eps 1e-6, T 200, scale 1 |
| OnlineSubspaceAdamW | online_pca (η = 1/T) | adam (HF) | keep | drop | eps 1e-6, T 200 |
| FloraAdam | random Gaussian | adam | rotate | drop | κ = 1000 |
| GoLore | svd for rand_ratio·total_steps, then random Stiefel | adam (HF) | rotate (first moment) | drop | T 200, rand_ratio 0.8 |
| APOLLO | random Gaussian (or svd) | adam (HF) | keep | apollo, channel, √scale, γ 1.01 | eps 1e-6, T 200 |
| APOLLOMini | random Gaussian | adam (HF) | keep | apollo, tensor, √128 | rank 1 |
| Fira | svd | adam (HF) | keep | fira, channel, γ 1.01 | eps 1e-6, T 200 |
| FRUGAL | svd (or random Stiefel) | adam | reset | sign (or sgd/drop) | density 0.25, T 200, wd 0.01 |
| LDAdam | randomized (1 warm power step), T = 1 | adam | rotate m and v | drop (or error_feedback) | betas (0.908, 0.99) |
| SUMO | randomized | orthogonal (exact SVD) | rotate | sgd | momentum 0.95, T 200 |
| AdamP / SGDP | identity | adam / sgdm | — | — | radial projection δ 0.1, wd_ratio 0.1 |
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch

from .optimizer import ParamsT, SubspaceOptimizer

_SIDES = {"std": "smaller", "reverse_std": "larger", "left": "left", "right": "right"}


def _side(proj_type: str) -> str:
    if proj_type not in _SIDES:
        raise ValueError(f"proj_type={proj_type!r} is not supported; allowed: {sorted(_SIDES)}.")
    return _SIDES[proj_type]


def _bias(correct_bias: bool) -> str:
    return "hf" if correct_bias else "none"


def _build_groups(
    params: ParamsT,
    rank: int | float | None,
    anchor_keys: dict[str, Any],
    translate: Callable[[dict[str, Any]], dict[str, Any]],
    markers: tuple[str, ...],
    preset: str,
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Turn anchor-format params/groups into gradspace groups: subspace groups get ``translate(anchor options)``.

    Precedence: a group's own keys, then gradspace options given to the preset's constructor (``options``), then
    the preset's translation of the anchor arguments."""
    items = list(params)
    if not items:
        raise ValueError(f"{preset} got an empty parameter list.")
    groups = [dict(g) for g in items] if isinstance(items[0], dict) else [{"params": items}]
    out, any_subspace = [], False
    for g in groups:
        anchor = {k: g.pop(k, default) for k, default in anchor_keys.items()}
        flagged = any(g.pop(m, False) for m in markers)
        explicit_identity = g.get("projector") == "identity"
        has_rank = "rank" in g or flagged or rank is not None
        if has_rank and not explicit_identity:
            sub = {k: v for k, v in translate(anchor).items() if k not in (options or {})}
            sub.update(g)
            if "rank" not in sub:
                if rank is None:
                    raise ValueError(f"{preset}: a group is marked for a subspace ({markers}) but has no rank.")
                sub["rank"] = rank
            out.append(sub)
            any_subspace = True
        else:
            g["projector"] = "identity"
            out.append(g)
    if not any_subspace:
        warnings.warn(
            f"{preset}: no param group has a 'rank' (or the anchor's marker), so every parameter runs the rule in "
            "full space, as the anchor does; pass rank=... or groups from gradspace.param_groups(model, rank=...).",
            UserWarning,
            stacklevel=3,
        )
    return out


class GaLoreAdamW(SubspaceOptimizer):
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

    _projector = "svd"

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        *,
        rank: int | float | None = None,
        update_proj_gap: int = 200,
        scale: float = 1.0,
        proj_type: str = "std",
        **options: Any,
    ) -> None:
        anchor = {"update_proj_gap": update_proj_gap, "scale": scale, "proj_type": proj_type}
        groups = _build_groups(
            params, rank, anchor,
            lambda a: {"projector": self._projector, "refresh_every": a["update_proj_gap"], "scale": a["scale"],
                       "side": _side(a["proj_type"]), "on_refresh": "keep", "residual": "drop"},
            (), type(self).__name__, options,
        )
        options.setdefault("bias_correction", _bias(correct_bias))
        super().__init__(groups, lr, rule="adam", betas=betas, eps=eps, weight_decay=weight_decay, **options)


class OnlineSubspaceAdamW(GaLoreAdamW):
    """Online Subspace Descent: the basis follows G by an online-PCA step every iteration (Liang et al. 2024, arXiv:2408.12857).

    Q ← orth(Q + 2η(I − QQᵀ)ĜᵀĜQ) with η = 1/``update_proj_gap`` (the anchor uses the gap as an inverse step size of
    its basis optimizer); Adam (HF bias correction) on ``down(G)``; outside dropped. The anchor steps Q with AdamW and
    never re-orthonormalizes; this follows the paper's orthonormality constraint by QR.
    """

    _projector = "online_pca"


class FloraAdam(SubspaceOptimizer):
    """Flora-style Adam: moments in a seeded Gaussian subspace P ~ N(0, 1/r), re-drawn every κ steps with the first
    moment transported M ← M (P_newᵀ P_old)ᵀ (Hao et al. 2024, "Flora", arXiv:2402.03293).

    The basis is never stored (seed + counter). Flora's own optimizer is Adafactor with a full-rank factored second
    moment and only the momentum compressed; this preset keeps both Adam moments in the random subspace.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        rank: int | float | None = None,
        kappa: int = 1000,
        seed: int = 0,
        **options: Any,
    ) -> None:
        groups = _build_groups(
            params, rank, {"kappa": kappa},
            lambda a: {"projector": "random", "random_dist": "gaussian", "refresh_every": a["kappa"],
                       "on_refresh": "rotate", "residual": "drop"},
            (), type(self).__name__, options,
        )
        super().__init__(groups, lr, rule="adam", betas=betas, eps=eps, weight_decay=weight_decay, seed=seed, **options)


class GoLore(SubspaceOptimizer):
    """GoLore: GaLore's SVD subspace for the first ``rand_ratio`` of training, then uniform random (Stiefel) subspaces,
    with the first moment transported at each refresh (He et al. 2025, "Subspace Optimization for LLMs with
    Convergence Guarantees", arXiv:2410.11289).

    ``total_steps`` sets the switch step ``rand_ratio · total_steps``; without it every subspace is random.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        *,
        rank: int | float | None = None,
        update_proj_gap: int = 200,
        scale: float = 1.0,
        proj_type: str = "std",
        rand_ratio: float = 0.8,
        total_steps: int | None = None,
        seed: int = 0,
        **options: Any,
    ) -> None:
        if not 0.0 <= rand_ratio <= 1.0:
            raise ValueError(f"rand_ratio={rand_ratio!r} must be in [0, 1].")
        warmup = 0 if total_steps is None else int(rand_ratio * total_steps)
        anchor = {"update_proj_gap": update_proj_gap, "scale": scale, "proj_type": proj_type}
        groups = _build_groups(
            params, rank, anchor,
            lambda a: {"projector": "random", "random_dist": "stiefel", "svd_warmup_steps": warmup,
                       "refresh_every": a["update_proj_gap"], "scale": a["scale"], "side": _side(a["proj_type"]),
                       "on_refresh": "rotate", "residual": "drop"},
            (), type(self).__name__, options,
        )
        options.setdefault("bias_correction", _bias(correct_bias))
        super().__init__(groups, lr, rule="adam", betas=betas, eps=eps, weight_decay=weight_decay, seed=seed, **options)


class APOLLO(SubspaceOptimizer):
    """APOLLO: U = √α · limit(G ⊙ ‖Ñ‖/‖R‖), the per-channel scale estimated by Adam in a random subspace
    R = G P, P ~ N(0, 1/r) (Zhu et al. 2025, "APOLLO: SGD-like Memory, AdamW-level Performance", arXiv:2412.05270).

    Drop-in for ``apollo_torch.APOLLOAdamW`` (groups with ``rank``, ``proj`` ("random" | "svd"), ``scale_type``
    ("channel" | "tensor"), ``scale``, ``update_proj_gap``, ``proj_type``). As in the anchor, ``scale`` enters as
    √scale and the norm-growth limiter uses γ = 1.01 (``disable_nl=True`` turns it off). The random basis is
    regenerated from its seed, not stored (so ``proj="random"`` draws differ from the anchor's generator stream).
    Weight decay is applied before the update (the anchor applies it after, an O(lr²·wd) difference).
    """

    _anchor_defaults: dict[str, Any] = {"proj": "random", "scale_type": "channel", "scale": 1.0}

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        *,
        rank: int | float | None = None,
        proj: str | None = None,
        scale_type: str | None = None,
        scale: float | None = None,
        update_proj_gap: int = 200,
        proj_type: str = "std",
        disable_nl: bool = False,
        seed: int = 0,
        **options: Any,
    ) -> None:
        d = self._anchor_defaults
        anchor = {
            "proj": d["proj"] if proj is None else proj,
            "scale_type": d["scale_type"] if scale_type is None else scale_type,
            "scale": d["scale"] if scale is None else scale,
            "update_proj_gap": update_proj_gap,
            "proj_type": proj_type,
        }

        def translate(a: dict[str, Any]) -> dict[str, Any]:
            if a["proj"] not in ("random", "svd"):
                raise ValueError(f"proj={a['proj']!r} must be 'random' or 'svd'.")
            if a["scale"] < 0:
                raise ValueError(f"scale={a['scale']!r} must be >= 0 (it enters as sqrt(scale)).")
            return {"projector": a["proj"], "random_dist": "gaussian", "residual": "apollo",
                    "residual_scale_type": a["scale_type"], "scale": math.sqrt(a["scale"]),
                    "refresh_every": a["update_proj_gap"], "side": _side(a["proj_type"]), "on_refresh": "keep",
                    "limiter_gamma": 0.0 if disable_nl else 1.01}

        groups = _build_groups(params, rank, anchor, translate, (), type(self).__name__, options)
        options.setdefault("bias_correction", _bias(correct_bias))
        super().__init__(groups, lr, rule="adam", betas=betas, eps=eps, weight_decay=weight_decay, seed=seed, **options)


class APOLLOMini(APOLLO):
    """APOLLO-Mini: APOLLO with one tensor-wise scale, α = 128 (applied as √128), used at rank 1 (Zhu et al. 2025).

    Near-zero optimizer state for projected weights: two 1 × max(m, n) moments and a seed. As with every preset, the
    groups that carry ``rank`` (``gradspace.param_groups(model, rank=1)``) or a constructor ``rank=1`` are projected.
    """

    _anchor_defaults = {"proj": "random", "scale_type": "tensor", "scale": 128.0}


class Fira(SubspaceOptimizer):
    """Fira: W ← W − lr·(α·up(ψ(R)) + limit(φ ⊙ (G − PPᵀG))), φ = ‖ψ(R)‖/‖R‖ per channel (Chen et al. 2024,
    "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?", arXiv:2410.01623).

    Drop-in for ``fira.FiraAdamW`` (groups with ``rank``, ``update_proj_gap``, ``alpha``, ``proj_type``). Follows the
    paper's residual ``G − PPᵀG``; the anchor's code subtracts ``α·PPᵀG``, leaving (1 − α)·PPᵀG in its residual
    (with ``alpha=1`` the two agree). Weight decay is applied before the update (the anchor: after).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        *,
        rank: int | float | None = None,
        update_proj_gap: int = 200,
        alpha: float = 1.0,
        proj_type: str = "std",
        **options: Any,
    ) -> None:
        anchor = {"update_proj_gap": update_proj_gap, "alpha": alpha, "proj_type": proj_type}
        groups = _build_groups(
            params, rank, anchor,
            lambda a: {"projector": "svd", "refresh_every": a["update_proj_gap"], "scale": a["alpha"],
                       "side": _side(a["proj_type"]), "on_refresh": "keep", "residual": "fira",
                       "residual_scale_type": "channel", "limiter_gamma": 1.01},
            (), type(self).__name__, options,
        )
        options.setdefault("bias_correction", _bias(correct_bias))
        super().__init__(groups, lr, rule="adam", betas=betas, eps=eps, weight_decay=weight_decay, **options)


FiraAdamW = Fira
APOLLOAdamW = APOLLO


class FRUGAL(SubspaceOptimizer):
    """FRUGAL: Adam in a density-ρ subspace with moments reset at each refresh, state-free signSGD on the rest
    (Zmushko et al. 2025, "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead", arXiv:2411.07837).

    W ← W(1 − lr·wd) − lr·s·up(Adam(down(G))) − lr·s·ρ_in·sign(G − up(down(G))), with ``s`` =
    ``proj_params_lr_scale`` and ``ρ_in`` = ``inactive_lr_scale``. Groups flagged ``is_proj_params=True`` (the anchor's
    marker) or carrying ``rank`` get the subspace; ``density`` becomes the fractional rank.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        *,
        density: float = 0.25,
        update_gap: int = 200,
        proj_type: str = "svd",
        proj_side: str = "std",
        reset_statistics: bool = True,
        inactive_update_rule: str = "sign_sgd",
        inactive_lr_scale: float = 1.0,
        proj_params_lr_scale: float = 1.0,
        rank: int | float | None = None,
        seed: int = 0,
        **options: Any,
    ) -> None:
        if not 0.0 < density < 1.0:
            raise ValueError(f"density={density!r} must be in (0, 1) (use projector='identity' for full Adam).")
        rules = {"sign_sgd": "sign", "sgd": "sgd", "no": "drop"}
        if inactive_update_rule not in rules:
            raise ValueError(f"inactive_update_rule={inactive_update_rule!r} must be one of {sorted(rules)}.")
        projs = {"svd": ("svd", "gaussian"), "random": ("random", "stiefel")}
        if proj_type not in projs:
            raise ValueError(f"proj_type={proj_type!r} must be one of {sorted(projs)} (coordinate/block variants are not implemented).")
        anchor = {"density": density, "update_gap": update_gap, "proj_side": proj_side}
        groups = _build_groups(
            params, rank, anchor,
            lambda a: {"projector": projs[proj_type][0], "random_dist": projs[proj_type][1], "rank": a["density"],
                       "refresh_every": a["update_gap"], "side": _side(a["proj_side"]),
                       "on_refresh": "reset" if reset_statistics else "keep",
                       "residual": rules[inactive_update_rule], "scale": proj_params_lr_scale,
                       "residual_lr_scale": proj_params_lr_scale * inactive_lr_scale},
            ("is_proj_params",), type(self).__name__, options,
        )
        super().__init__(groups, lr, rule="adam", betas=betas, eps=eps, weight_decay=weight_decay, seed=seed, **options)


class LDAdam(SubspaceOptimizer):
    """LDAdam: Adam in a subspace tracked every step by one warm-started block power iteration, with both moments
    transported projection-aware at each step (Robert et al. 2025, "LDAdam: Adaptive Optimization from Low-Dimensional
    Gradient Statistics", arXiv:2410.16103).

    Groups flagged ``enable_lowrank=True`` (the anchor's marker) or carrying ``rank`` get the subspace. The basis is
    computed from the (error-fed) gradient rather than LDAdam's blend of gradient and momentum; ``error_feedback=True``
    keeps the dropped gradient in an fp32 buffer and adds it at the next step (LDAdam's optimizer-state compression
    error term is not included).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.908, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        rank: int | float | None = None,
        proj_type: str = "std",
        error_feedback: bool = False,
        seed: int = 0,
        **options: Any,
    ) -> None:
        groups = _build_groups(
            params, rank, {"proj_type": proj_type},
            lambda a: {"projector": "randomized", "power_iters": 1, "oversample": 0, "refresh_every": 1,
                       "side": _side(a["proj_type"]), "on_refresh": "rotate",
                       "residual": "error_feedback" if error_feedback else "drop"},
            ("enable_lowrank",), type(self).__name__, options,
        )
        super().__init__(groups, lr, rule="adam", betas=betas, eps=eps, weight_decay=weight_decay, seed=seed,
                         rotate_second_moment=True, **options)


class SUMO(SubspaceOptimizer):
    """SUMO: exactly orthogonalized momentum in a randomized-SVD subspace, SGD on the rest (Refael et al. 2025,
    "SUMO: Subspace-Aware Moment-Orthogonalization", arXiv:2505.24749).

    M ← μM + QᵀG (transported M ← (Q_newᵀQ_old)M at refresh); W ← W − lr·(Q·orth(M)·√max(1, rows/r) + (G − QQᵀG)).
    The paper's norm-growth limiter on the orthogonalized update is not applied.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        *,
        rank: int | float | None = None,
        update_proj_gap: int = 200,
        scale: float = 1.0,
        proj_type: str = "std",
        residual_lr_scale: float = 1.0,
        seed: int = 0,
        **options: Any,
    ) -> None:
        anchor = {"update_proj_gap": update_proj_gap, "scale": scale, "proj_type": proj_type}
        groups = _build_groups(
            params, rank, anchor,
            lambda a: {"projector": "randomized", "refresh_every": a["update_proj_gap"], "scale": a["scale"],
                       "side": _side(a["proj_type"]), "on_refresh": "rotate", "residual": "sgd",
                       "residual_lr_scale": residual_lr_scale},
            (), type(self).__name__, options,
        )
        options.setdefault("ortho_method", "svd")
        super().__init__(groups, lr, rule="orthogonal", momentum=momentum, weight_decay=weight_decay, seed=seed, **options)


class AdamP(SubspaceOptimizer):
    """AdamP: Adam whose update loses its radial component on scale-invariant weights (Heo et al. 2021, "AdamP:
    Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights", arXiv:2006.08217).

    If |cos(G, W)| < δ/√dim per output channel (else per layer), U ← U − Ŵ(Ŵ·U) and weight decay is multiplied by
    ``wd_ratio``. Full-space Adam otherwise; no subspace.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
        **options: Any,
    ) -> None:
        if nesterov:
            raise ValueError("AdamP(nesterov=True) is not implemented; use nesterov=False.")
        super().__init__(params, lr, projector="identity", rule="adam", betas=betas, eps=eps,
                         weight_decay=weight_decay, radial_projection=True, radial_delta=delta,
                         radial_wd_ratio=wd_ratio, radial_eps=eps, **options)


class SGDP(SubspaceOptimizer):
    """SGDP: SGD with momentum whose update loses its radial component on scale-invariant weights (Heo et al. 2021).

    Weight decay follows the anchor: ``W ← W(1 − lr·wd·wd_ratio/(1 − μ))`` (the radial ratio only when projected).
    The momentum buffer starts at the first gradient as in ``torch.optim.SGD``; the anchor starts it at
    ``(1 − dampening)·g``, so the two differ when ``dampening > 0``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        eps: float = 1e-8,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        **options: Any,
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum!r} must be in [0, 1).")
        super().__init__(params, lr, projector="identity", rule="sgdm", momentum=momentum, dampening=dampening,
                         nesterov=nesterov, eps=eps, weight_decay=weight_decay / (1.0 - momentum),
                         radial_projection=True, radial_delta=delta, radial_wd_ratio=wd_ratio, radial_eps=eps, **options)


PRESETS: dict[str, type[SubspaceOptimizer]] = {
    cls.__name__: cls
    for cls in (GaLoreAdamW, OnlineSubspaceAdamW, FloraAdam, GoLore, APOLLO, APOLLOMini, Fira, FRUGAL, LDAdam, SUMO,
                AdamP, SGDP)
}
