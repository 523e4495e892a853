"""Components own their options: registering one adds its options; groups hold the options of what they select."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import gradspace
from gradspace import registry
from gradspace.options import OptionError

DOC = Path(__file__).resolve().parents[2] / "docs" / "guide" / "custom.md"


def _doc_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert blocks, "docs/guide/custom.md lost its example"
    return blocks[0]


@pytest.fixture()
def signum():
    scope: dict = {}
    before = (dict(registry.RULES), dict(registry.DEFAULTS), {k: list(v) for k, v in registry.OWNERS.items()})
    exec(compile(_doc_example(), str(DOC), "exec"), scope)  # the docs' example, as a user runs it
    yield scope
    registry.RULES.clear(); registry.RULES.update(before[0])
    registry.DEFAULTS.clear(); registry.DEFAULTS.update(before[1])
    registry.OWNERS.clear(); registry.OWNERS.update(before[2])


def test_the_docs_example_registers_a_rule_with_its_own_option_and_trains(signum):
    assert "signum" in registry.RULES and registry.DEFAULTS["signum_beta"] == 0.9
    with pytest.raises(ValueError, match=r"signum_beta=1.5 is outside the allowed range"):
        gradspace.SubspaceOptimizer([torch.nn.Parameter(torch.randn(4, 4))], rule="signum", signum_beta=1.5)


def test_a_registered_rule_equals_its_reference_in_full_space(signum):
    """identity projector + the docs' Signum ≡ a hand-written Signum loop (the degenerate case proves composition)."""
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(6, 5, generator=gen)
    grads = [torch.randn(6, 5, generator=gen) for _ in range(5)]
    w = torch.nn.Parameter(w0.clone())
    opt = gradspace.SubspaceOptimizer([w], lr=0.1, projector="identity", rule="signum", signum_beta=0.7,
                                      weight_decay=0.01)
    ref, m = w0.clone(), torch.zeros_like(w0)
    for g in grads:
        w.grad = g.clone()
        opt.step()
        m = 0.7 * m + 0.3 * g
        ref = ref * (1 - 0.1 * 0.01) - 0.1 * torch.sign(m)
    torch.testing.assert_close(w.detach(), ref, rtol=1e-6, atol=1e-6)


def test_groups_hold_core_options_and_those_of_their_components():
    w = torch.nn.Parameter(torch.randn(8, 6))
    g = gradspace.SubspaceOptimizer([w], rule="sgdm", projector="svd").param_groups[0]
    assert {"momentum", "dampening", "nesterov"} <= set(g) and "betas" not in g and "oversample" not in g
    g = gradspace.SubspaceOptimizer([w], rule="orthogonal", projector="randomized").param_groups[0]
    assert {"ortho_method", "oversample", "betas"} <= set(g)  # the fallback rule (adam) runs the vectors
    assert set(registry.CORE_OPTIONS) <= set(g)


def test_a_hand_edited_choice_gets_its_components_options():
    w = torch.nn.Parameter(torch.randn(8, 6))
    opt = gradspace.SubspaceOptimizer([w], lr=1e-2, rank=2, rule="sgdm")
    opt.param_groups[0]["rule"] = "adam"
    w.grad = torch.randn(8, 6)
    opt.step()
    assert opt.param_groups[0]["betas"] == (0.9, 0.999) and "rule.exp_avg_sq" in opt.state[w]


def test_options_of_unselected_components_are_still_validated():
    w = torch.nn.Parameter(torch.randn(8, 6))
    with pytest.raises(ValueError, match=r"momentum=1\.0"):
        gradspace.SubspaceOptimizer([w], rule="adam", momentum=1.0)


def test_registration_refuses_core_names_and_conflicting_defaults():
    class Bad:
        name = "bad_rule"
        options = {"rank": 3}
    with pytest.raises(ValueError, match="core option"):
        registry.register_rule(Bad)

    class Clash:
        name = "clash_rule"
        options = {"momentum": 0.5}  # sgdm declares momentum=0.9
    with pytest.raises(ValueError, match="must agree"):
        registry.register_rule(Clash)
    assert "clash_rule" not in registry.RULES


def test_unknown_options_raise_type_error_listing_allowed_names():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['not_an_option'\]"):
        gradspace.SubspaceOptimizer([torch.nn.Parameter(torch.randn(3))], not_an_option=1)


def test_option_errors_carry_the_option_name():
    with pytest.raises(OptionError) as err:
        gradspace.SubspaceOptimizer([torch.nn.Parameter(torch.randn(3))], refresh_every=0)
    assert err.value.key == "refresh_every" and err.value.value == 0
