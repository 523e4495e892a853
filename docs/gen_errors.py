"""Write the "Common mistakes" page by running each mistake and recording what gradspace prints.

Run by the docs build (``docs/hooks.py``) so the messages on the page cannot drift from the code; runs in about a
second on CPU. ``python docs/gen_errors.py`` prints the page.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import textwrap
import warnings

import torch
from torch import nn

import gradspace


def rank_larger_than_side():
    layer = nn.Linear(16, 64)                     # weight is 64 × 16: the projected (smaller) side is 16
    groups = [{"params": [("fc.weight", layer.weight)], "rank": 32},
              {"params": [("fc.bias", layer.bias)], "projector": "identity"}]
    opt = gradspace.SubspaceOptimizer(groups, lr=1e-3)


def rank_fixed():
    layer = nn.Linear(16, 64)
    groups = [{"params": [layer.weight], "rank": 0.25}, {"params": [layer.bias], "projector": "identity"}]
    opt = gradspace.SubspaceOptimizer(groups, lr=1e-3)   # rank 4 = a quarter of the side, no warning


def embedding_forced():
    model = nn.Sequential(nn.Embedding(1000, 64), nn.Linear(64, 64))
    emb = model[0].weight
    opt = gradspace.SubspaceOptimizer([{"params": [emb], "rank": 8}], lr=1e-3)   # no error, no warning
    model(torch.randint(0, 1000, (4, 5))).sum().backward()
    opt.step()
    print("embedding state:", {k: tuple(v.shape) for k, v in opt.state[emb].items() if torch.is_tensor(v) and v.dim()})


def embedding_fixed():
    model = nn.Sequential(nn.Embedding(1000, 64), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.Linear(64, 10))
    groups = gradspace.param_groups(model, rank=8)   # prints what it chose; embeddings always stay in full space
    opt = gradspace.SubspaceOptimizer(groups, lr=1e-3)


def layerwise_under_ddp():
    # a two-rank process group (torch's in-process "fake" backend stands in for torchrun + DDP here)
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", rank=0, world_size=2, store=FakeStore())
    try:
        model = nn.Linear(64, 64)
        opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-3, rank=8)
        stepper = gradspace.LayerwiseStepper(opt)
    finally:
        dist.destroy_process_group()


def nan_gradient_skip():
    model = nn.Linear(64, 64)
    opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-3, rank=8)   # nonfinite="skip" is the default
    model(torch.full((2, 64), float("nan"))).sum().backward()
    opt.step()
    print("skips counted:", opt.state[model.weight]["nonfinite_skips"])


def nan_gradient_raise():
    model = nn.Linear(64, 64)
    opt = gradspace.SubspaceOptimizer(model.named_parameters(), lr=1e-3, rank=8, nonfinite="raise")
    model(torch.full((2, 64), float("nan"))).sum().backward()
    opt.step()


def misspelled_option():
    model = nn.Linear(64, 64)
    opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-3, rank=8, refresh_evry=100)


def unknown_value():
    model = nn.Linear(64, 64)
    opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-3, rank=8, projector="pca")


CASES = [
    ("Rank larger than a side of the weight", rank_larger_than_side, rank_fixed,
     "The rank is clamped to the side, so that weight gets the whole space and saves nothing. Use a smaller rank, a "
     "fractional rank (`rank=0.25` is a quarter of each weight's projected side), or `projector=\"identity\"`."),
    ("A projector on an embedding", embedding_forced, embedding_fixed,
     "Nothing stops you: an embedding weight in a group with `rank` is projected like any matrix (its smaller side, "
     "the embedding width, is the projected one). A low-rank update of an embedding is rarely what you want: only "
     "the rows of the tokens in the batch have a gradient, and the basis mixes them with all others. Build groups "
     "with `gradspace.param_groups(model, rank=...)`, which never projects embeddings or weights tied to them."),
    ("A layer-wise mode under DDP/FSDP", layerwise_under_ddp, None,
     "Layer-wise updates run inside backward, before DDP has averaged the gradient, so replicas would diverge; "
     "the stepper refuses to start. Call `optimizer.step()` under DDP/FSDP (the optimizer itself is DDP- and "
     "FSDP2-aware; see [Distributed](distributed.md))."),
    ("A NaN or Inf gradient", nan_gradient_skip, nan_gradient_raise,
     "By default (`nonfinite=\"skip\"`) the whole step is skipped: no parameter and no state changes, and the "
     "event is counted in `state[p][\"nonfinite_skips\"]`. With `nonfinite=\"raise\"` the step raises, naming the "
     "parameter (names are known when you pass `named_parameters()` or `param_groups(...)`). Look for the source "
     "of the NaN (lr too high, fp16 overflow without a loss scaler, a log of zero)."),
    ("A misspelled option", misspelled_option, None,
     "Options are validated at construction; the error lists every allowed name."),
    ("An unknown component", unknown_value, None,
     "Component names are checked at construction; the error lists the allowed values."),
]


def _body(fn) -> str:
    lines = inspect.getsource(fn).splitlines()[1:]
    return textwrap.dedent("\n".join(lines)).strip()


def _run(fn) -> str:
    """Run ``fn``; return everything it printed, warned and raised, as the user would see it."""
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
        warnings.simplefilter("always")
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - the message is the point
            print(f"{type(err).__name__}: {err}")
    text = [f"{w.category.__name__}: {w.message}" for w in caught]
    printed = out.getvalue().strip()
    return "\n".join(text + ([printed] if printed else [])) or "(nothing: no error, no warning)"


def render() -> str:
    parts = [
        "# Common mistakes",
        "",
        "Each block below was **run by the docs build** (`docs/gen_errors.py`): the code is the code that ran, the "
        "output is what gradspace printed, warned or raised, so this page cannot drift from the library.",
        "",
    ]
    for title, bad, good, advice in CASES:
        parts += [f"## {title}", "", "```python", _body(bad), "```", "", "Output:", "", "```text", _run(bad), "```", ""]
        parts += ["**Fix.** " + advice, ""]
        if good is not None:
            parts += ["```python", _body(good), "```", "", "Output:", "", "```text", _run(good), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render())
