"""The rule protocol: the momentum update inside the subspace.

A rule maps subspace coordinates ``r`` (the projected gradient) to an update direction and keeps its moments in
``state`` under ``rule.*`` keys. It never sees the parameter: learning rate, weight decay and ``maximize`` are applied
in full space by the outer step. ``direction`` returns ``(d, factor)`` where ``factor`` is a scalar the outer step
multiplies into the *whole* update (the "step-size" form of Adam's bias correction, which anchors such as GaLore,
Fira and APOLLO apply to their residual too); rules without such a factor return 1.0.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, MutableMapping, Protocol

from torch import Tensor

State = MutableMapping[str, Any]
Group = Mapping[str, Any]


class Rule(Protocol):
    """Turns subspace coordinates into an update direction; its momentum lives there.

    ``linear_keys`` are state tensors that transform like the coordinates (first moments): on a basis change
    ``Q_old → Q_new`` they are transported exactly by ``M ← M (Q_newᵀ Q_old)ᵀ``. ``needs_matrix`` rules (the
    orthogonalized one) cannot act on vectors; non-matrix parameters then use the group's ``fallback_rule``.
    ``options`` declares the rule's options with their defaults (``register_rule`` picks them up, so they are
    accepted by every optimizer and stored in each param group); ``validate(group)`` checks their values.
    """

    name: ClassVar[str]
    linear_keys: ClassVar[tuple[str, ...]]
    needs_matrix: ClassVar[bool]
    options: ClassVar[dict[str, Any]]

    @staticmethod
    def validate(group: Group) -> None: ...

    def init(self, coords: Tensor, state: State, group: Group) -> None:
        """Create zeroed moments shaped, typed and placed like ``coords`` (the state dtype is chosen by the caller)."""
        ...

    def direction(self, r: Tensor, state: State, group: Group) -> tuple[Tensor, float]: ...

    # optional: ``bounded(group) -> bool``, True when |d| is bounded independently of the gradient (Adam with
    # β1² < β2, Lion, orthogonalized momentum): residuals may then take d's norms in fp32 without overflow

    def rotate(self, t: Tensor, state: State, group: Group) -> None: ...


def rotate_linear(rule: Rule, t: Tensor, state: State) -> None:
    """Transport the rule's first moments into a new basis: ``M ← M tᵀ`` with ``t = Q_newᵀ Q_old`` (r × r)."""
    for key in rule.linear_keys:
        m = state[key]
        state[key] = (m.float() @ t.T).to(m.dtype)
