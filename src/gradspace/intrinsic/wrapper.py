"""IntrinsicDimension: train a model in a fixed random d-dimensional subspace of its parameter space."""

from __future__ import annotations

import copy
import numbers
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .projections import PROJECTIONS, make_projection


class IntrinsicDimension(nn.Module):
    r"""θ = θ₀ + P z with z ∈ R^d the only trained parameters, P ∈ R^{D×d} fixed and random (Li et al. 2018).

    Wraps ``model``: its D trainable parameters become the frozen θ₀ (``requires_grad`` set to False; they stay the
    model's parameters, so they appear in ``state_dict`` under ``model.``); ``parameters()`` yields only ``z``
    (initialized at 0, so the wrapped model starts as ``model``). The forward runs ``model`` on θ with
    ``torch.func.functional_call``; buffers (BatchNorm statistics) are the model's own. Works with any optimizer.
    (Nested inside another module, the outer module's ``parameters()`` also lists the frozen θ₀ tensors; they never
    receive gradients.)

    Args:
        model: the module to reparameterize (its trainable parameters define D).
        d: subspace dimension, an int with 1 ≤ d < D.
        projection: ``"dense"`` (Gaussian, unit-norm columns; stores P, memory O(D·d)), ``"sparse"`` (±1 entries,
            density 1/√D by default, unit-norm columns; memory O(d·√D), or O(D + d) with ``cache_projection=False``)
            or ``"fastfood"`` (H G Π H B, memory O(D), time O(D log D)).
        seed: int seed of P; saved in ``state_dict`` (buffers ``seed``, ``projection_id`` and ``sparse_k``, the
            nonzeros per column) and P is regenerated from them on load.
        sparse_density: nonzeros per column / D for ``"sparse"``, in (0, 1] (default 1/√D).
        cache_projection: for ``"sparse"``: keep the nonzeros (default) or regenerate them at every use.

    Examples:
        >>> import torch
        >>> from gradspace.intrinsic import IntrinsicDimension
        >>> model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 3))
        >>> wrapped = IntrinsicDimension(model, d=8, projection="fastfood", seed=0)
        >>> [tuple(p.shape) for p in wrapped.parameters()], wrapped.D
        ([(8,)], 283)
        >>> opt = torch.optim.Adam(wrapped.parameters(), lr=1e-2)
        >>> wrapped(torch.randn(4, 10)).square().mean().backward(); opt.step()
        >>> wrapped.z.grad.shape
        torch.Size([8])

    References:
        Li, Farkhoor, Liu, Yosinski 2018, "Measuring the Intrinsic Dimension of Objective Landscapes"
        (arXiv:1804.08838); Le, Sarlós, Smola 2013, "Fastfood — approximating kernel expansions in loglinear time";
        Achlioptas 2003, "Database-friendly random projections".
    """

    def __init__(
        self,
        model: nn.Module,
        d: int,
        projection: str = "dense",
        seed: int = 0,
        *,
        sparse_density: float | None = None,
        cache_projection: bool = True,
    ) -> None:
        super().__init__()
        if projection not in PROJECTIONS:
            raise ValueError(f"projection={projection!r} is not supported; allowed values: "
                             f"{', '.join(map(repr, PROJECTIONS))}.")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"seed={seed!r} must be an int.")
        seed = int(seed)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        D = sum(p.numel() for _, p in named)
        if D < 2:
            raise ValueError(f"the model has D={D} trainable parameters; intrinsic-dimension training needs D ≥ 2.")
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or not 1 <= int(d) < D:
            raise ValueError(f"d={d!r} must be an int with 1 ≤ d < D = {D} (the model's trainable parameters).")
        d = int(d)
        if projection == "dense" and D * d > 2**28:
            warnings.warn(f"projection='dense' stores a {D}×{d} matrix ({D * d * 4 / 2**30:.1f} GiB); "
                          "projection='fastfood' needs O(D) memory.", UserWarning, stacklevel=2)
        self.model = model
        self.D, self.d = D, d
        self._names = [n for n, _ in named]
        self._options = {"density": sparse_density, "cache": cache_projection} if projection == "sparse" else {}
        for _, p in named:
            p.requires_grad_(False)
        self.z = nn.Parameter(torch.zeros(d, device=named[0][1].device))
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.int64))
        self.register_buffer("projection_id", torch.tensor(PROJECTIONS.index(projection), dtype=torch.int64))
        self.projection = make_projection(projection, D, d, seed, **self._options).to(self.z.device)
        self.register_buffer("sparse_k", torch.tensor(getattr(self.projection, "k", 0), dtype=torch.int64))
        self.register_load_state_dict_post_hook(IntrinsicDimension._rebuild_after_load)

    @property
    def projection_name(self) -> str:
        """``"dense"``, ``"sparse"`` or ``"fastfood"``."""
        return PROJECTIONS[int(self.projection_id)]

    @staticmethod
    def _rebuild_after_load(module: nn.Module, incompatible: Any) -> None:
        """Regenerate P when a checkpoint carried another seed, projection or sparse density (P is never saved)."""
        assert isinstance(module, IntrinsicDimension)
        proj, kind, k = module.projection, module.projection_name, int(module.sparse_k)
        if proj.seed == int(module.seed) and proj.kind == kind and getattr(proj, "k", 0) == k:
            return
        options: dict[str, Any] = {}
        if kind == "sparse":
            options = {"density": k / module.D, "cache": module._options.get("cache", True)}
        module.projection = make_projection(kind, module.D, module.d, int(module.seed), **options).to(module.z.device)

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]:
        """Only ``z``: the wrapped model's parameters are θ₀, frozen."""
        for name, p in super().named_parameters(prefix=prefix, recurse=recurse, remove_duplicate=remove_duplicate):
            if not name.removeprefix(prefix + "." if prefix else "").startswith("model."):
                yield name, p

    def delta(self) -> Tensor:
        """P z, the flat offset from θ₀ (length D, fp32)."""
        return self.projection(self.z)

    def theta(self) -> dict[str, Tensor]:
        """θ = θ₀ + P z as ``{parameter name: tensor}`` (differentiable in z)."""
        delta = self.delta()
        params = dict(self.model.named_parameters())
        out, offset = {}, 0
        for name in self._names:
            p0 = params[name]
            n = p0.numel()
            out[name] = p0 + delta[offset : offset + n].view(p0.shape).to(p0.dtype)
            offset += n
        return out

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.model, self.theta(), args, kwargs)

    @torch.no_grad()
    def merged_model(self) -> nn.Module:
        """A deep copy of the model with θ₀ + P z written into its parameters (trainable again), for export."""
        model = copy.deepcopy(self.model)
        params = dict(model.named_parameters())
        for name, value in self.theta().items():
            params[name].copy_(value)
            params[name].requires_grad_(True)
        return model

    def extra_repr(self) -> str:
        return f"D={self.D}, d={self.d}, projection={self.projection_name!r}, seed={int(self.seed)}"
