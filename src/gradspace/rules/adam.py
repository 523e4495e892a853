"""Adam with decoupled weight decay, inside the subspace (Kingma & Ba 2015; Loshchilov & Hutter 2019)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import options as opt
from .base import Group, State, rotate_linear


class Adam:
    """m ← β1 m + (1−β1) r; v ← β2 v + (1−β2) r²; d = m̂ / (√v̂ + ε).

    ``bias_correction``: ``"torch"`` (default; exactly ``torch.optim.AdamW``: ``(m/bc1) / (√v/√bc2 + ε)``),
    ``"hf"`` (the Hugging Face/GaLore/Fira/APOLLO form: ``d = m / (√v + ε)`` and the whole update scaled by
    ``√bc2 / bc1``), or ``"none"``. On ``on_refresh="rotate"`` the first moment is transported exactly; with
    ``rotate_second_moment=True`` the second moment is transported as LDAdam does (Robert et al. 2025,
    arXiv:2410.16103): the variance part by ``(t∘t)`` and the mean part by the rotated first moment.
    """

    name = "adam"
    linear_keys = ("rule.exp_avg",)
    nonnegative_keys = ("rule.exp_avg_sq",)
    needs_matrix = False
    options = {"betas": (0.9, 0.999), "eps": 1e-8, "bias_correction": "torch", "rotate_second_moment": False}

    @staticmethod
    def validate(group: Group) -> None:
        opt.pair("betas", group["betas"])
        opt.real("eps", group["eps"], 0.0, None)
        opt.choice("bias_correction", group["bias_correction"], ("torch", "hf", "none"))

    @staticmethod
    def bounded(group: Group) -> bool:
        """|d| is bounded independently of the gradient when m and v are EMAs of the same coordinates and β1² < β2
        (Cauchy–Schwarz: |m̂|/√v̂ ≤ (1 − β1²/β2)^(−½)); not after a rotation (m transported, v not exactly) or with
        quantized moments (v may decode to 0 under a nonzero m)."""
        beta1, beta2 = group["betas"]
        quantized = isinstance(group["state_dtype"], str) and group["state_dtype"] in ("int8", "int4")
        return beta1 * beta1 < beta2 and group["on_refresh"] != "rotate" and not quantized

    def init(self, coords: Tensor, state: State, group: Group) -> None:
        state["rule.step"] = 0
        state["rule.exp_avg"] = torch.zeros_like(coords)
        state["rule.exp_avg_sq"] = torch.zeros_like(coords)

    def direction(self, r: Tensor, state: State, group: Group) -> tuple[Tensor, float]:
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        state["rule.step"] += 1
        t = state["rule.step"]
        m, v = state["rule.exp_avg"], state["rule.exp_avg_sq"]
        m.lerp_(r.to(m.dtype), 1 - beta1)
        v.mul_(beta2).addcmul_(r.to(v.dtype), r.to(v.dtype), value=1 - beta2)
        v.clamp_(max=torch.finfo(v.dtype).max)  # r² of a finite spike can overflow: saturate (the step is then ~m/√max)
        mode = group["bias_correction"]
        if mode == "torch":
            bc1, bc2 = 1 - beta1**t, 1 - beta2**t
            denom = (v.float().sqrt() / math.sqrt(bc2)).add_(eps)
            return m.float().div(denom).div_(bc1), 1.0
        denom = v.float().sqrt().add_(eps)
        d = m.float().div(denom)
        if mode == "hf":
            return d, math.sqrt(1 - beta2**t) / (1 - beta1**t)
        return d, 1.0

    def fused_direction(self, r: Tensor, state: State, group: Group) -> tuple[Tensor, float]:
        """:meth:`direction` by torch's fused AdamW kernel (one pass over r, m, v instead of eight), for fp32
        moments shaped like ``r``; else :meth:`direction`. The kernel steps a zero "parameter" d by
        ``−lr'·m̂/(√v̂ + ε')``: lr' = −1 gives the torch form; lr' = −bc1/√bc2 with ε' = ε/√bc2 gives the Hugging Face
        form's ``m/(√v + ε)``. The caller guarantees ``|r| < 1e18``: r² cannot overflow, so v never needs the
        reference's saturation (a saturated v stays finite: β2·max + (1 − β2)·r² < max)."""
        m, v = state["rule.exp_avg"], state["rule.exp_avg_sq"]
        mode = group["bias_correction"]
        if (mode == "none" or torch.compiler.is_compiling() or r.device.type not in ("cpu", "cuda")
                or not (r.dtype == m.dtype == v.dtype == torch.float32) or not (r.shape == m.shape == v.shape)
                or not (r.is_contiguous() and m.is_contiguous() and v.is_contiguous())):
            return self.direction(r, state, group)
        beta1, beta2 = group["betas"]
        state["rule.step"] += 1
        t = state["rule.step"]
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t
        lr, eps = (-1.0, float(group["eps"])) if mode == "torch" else (-bc1 / math.sqrt(bc2),
                                                                        float(group["eps"]) / math.sqrt(bc2))
        d = torch.zeros_like(r)
        torch._fused_adamw_([d], [r], [m], [v], [], [torch.full((), float(t), device=r.device)], lr=lr,
                            beta1=float(beta1), beta2=float(beta2), weight_decay=0.0, eps=eps, amsgrad=False,
                            maximize=False)
        return d, (math.sqrt(bc2) / bc1 if mode == "hf" else 1.0)

    def rotate(self, t: Tensor, state: State, group: Group) -> None:
        if group["rotate_second_moment"] and state["rule.step"] > 0:
            beta1, beta2 = group["betas"]
            k = state["rule.step"]
            bc1, bc2 = 1 - beta1**k, 1 - beta2**k
            # fp64: v/bc2 and m²/bc1² of a saturated moment overflow fp32, and inf·0 in the product would be NaN
            m, v, t64 = state["rule.exp_avg"].double(), state["rule.exp_avg_sq"].double(), t.double()
            m_new = m @ t64.T
            var = v / bc2 - (m / bc1) ** 2
            v_new = (bc2 * (var @ (t64 * t64).T + (m_new / bc1) ** 2)).abs()
            for key, new in (("rule.exp_avg", m_new), ("rule.exp_avg_sq", v_new)):
                top = torch.finfo(state[key].dtype).max
                state[key] = new.clamp_(-top, top).to(state[key].dtype)
            return
        rotate_linear(self, t, state)
