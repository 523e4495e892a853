"""Blockwise-quantized optimizer moments (8-bit / 4-bit) and stochastic rounding to bf16, in plain torch.

    x ≈ decode(encode(x)) :  x_i ≈ s_b · q[c_i],   s_b = max_{j ∈ block b} |x_j|,   c_i = argmin_k |x_i / s_b − q[k]|

Blockwise dynamic quantization as in 8-bit Adam (Dettmers et al. 2022, arXiv:2110.02861): the flattened tensor is cut
into blocks of ``block`` elements (the last one may be short), each block is scaled by its absolute maximum, and each
scaled value is rounded to the nearest entry of a fixed, non-linear code map ``q`` so that values near zero keep
precision:

* ``signed=True`` (first moment): the *dynamic* map of bitsandbytes' ``create_dynamic_map`` (7 decades, more levels
  in the larger decades; 256 values for int8, 16 for int4 with 3 exponent bits, as torchao's ``OptimState4bit``).
  ``0`` and ``1`` are exact, the map is symmetric except that ``−1`` is not a code (``−0.9965`` is, for int8).
* ``signed=False`` (second moment): a *geometric* map ``{0} ∪ {2^{−k·Δ} : k = 0 … L−2}`` — log-uniform over
  ``UNSIGNED_OCTAVES`` octaves (int8: 24 octaves ≈ 7.2 decades, Δ = 24/254, relative error ≤ 2^{Δ/2} − 1 = 3.3 %;
  int4: 14 octaves, Δ = 1, ≤ 41 %). Adam divides by √v, so what matters is v's *relative* error, which this map keeps
  uniform, where the dynamic map loses it in the lower decades (bitsandbytes' unsigned map: 28 % at 10⁻³·absmax and
  flushes below 10⁻⁷). Any positive input decodes to a positive value (at least the smallest level), so √v̂ never
  collapses to 0 under a non-zero m ("zero-point problem", Li et al. 2023, arXiv:2309.01507); negative inputs are
  clamped to 0, so a decoded second moment is never negative.

Layout: ``int8`` codes are ``uint8`` of ``x``'s shape (one byte per element); ``int4`` codes are two per byte, flat,
shape ``(ceil(numel / 2),)`` (element ``2i`` in the low nibble, ``2i + 1`` in the high nibble). ``scales`` are fp32 of
shape ``(ceil(numel / block),)``. Nothing else is stored (the code maps are constants of ``fmt``/``signed``), so the
state bytes are exactly ``codes.untyped_storage().nbytes() + scales.untyped_storage().nbytes()``
(:func:`encoded_nbytes`). Everything is shape-static tensor code: it runs on any device, on the meta device (for the
memory planner), and never reads a tensor value on the host.

Why not torchao: ``torchao.optim``'s ``OptimState8bit``/``OptimState4bit`` (0.18.0) resume exactly under
``torch.load(weights_only=True)`` and run on meta, but implement no arithmetic (``lerp_``, ``mul_``, ``addcmul_``,
``clone`` and ``copy.deepcopy`` raise ``NotImplementedError``), report fp32 bytes (``untyped_storage().nbytes()`` and
``nbytes`` of the wrapper are ``4·numel``), need ``numel`` divisible by the block, and quantize eagerly on CPU at
~0.4 µs/element (6.4 s for a 4096² moment); see ``docs/results/quant/torchao.md``.

Examples:
    >>> import torch
    >>> from gradspace.quant import decode, encode
    >>> x = torch.randn(1000)
    >>> codes, scales = encode(x, "int8", signed=True)
    >>> codes.dtype, tuple(codes.shape), tuple(scales.shape)
    (torch.uint8, (1000,), (4,))
    >>> bool(((decode(codes, scales, x.shape, "int8", signed=True) - x).abs() <= 0.02 * x.abs().max()).all())
    True

References:
    Dettmers, Lewis, Shleifer, Zettlemoyer. 8-bit Optimizers via Block-wise Quantization. ICLR 2022, arXiv:2110.02861.
    Li, Chen, Zhu. Memory Efficient Optimizers with 4-bit States. NeurIPS 2023, arXiv:2309.01507.
    bitsandbytes ``functional.create_dynamic_map``; torchao ``optim/quant_utils.py`` (``_fp32_to_bf16_sr``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

FORMATS = ("int8", "int4")
BITS = {"int8": 8, "int4": 4}
#: octaves spanned by the unsigned (second-moment) geometric map below the block maximum
UNSIGNED_OCTAVES = {"int8": 24.0, "int4": 14.0}
#: exponent bits of the signed dynamic map (bitsandbytes' default for 8 bits; torchao's for 4 bits)
SIGNED_EXPONENT_BITS = {"int8": 7, "int4": 3}

__all__ = ["FORMATS", "encode", "decode", "encoded_nbytes", "codes_shape", "code_map", "stochastic_round_"]


def _check(fmt: str, block: int) -> None:
    if fmt not in BITS:
        raise ValueError(f"fmt={fmt!r}: choose one of {FORMATS}.")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block={block!r} must be an int >= 1.")


def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> list[float]:
    """bitsandbytes' dynamic code map (``create_dynamic_map``), without the zero padding (as torchao's copy), sorted.

    Decade ``i`` (``10^{i−E} … 10^{i−E+1}``, ``E`` = ``max_exponent_bits``) holds linearly spaced values, twice as many
    in each higher decade; ``0`` and ``1`` are added. ``2**total_bits`` values in ``[−1, 1]`` (``[0, 1]`` unsigned).
    """
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        n = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        bounds = torch.linspace(0.1, 1, n, dtype=torch.float64)
        means = ((bounds[:-1] + bounds[1:]) / 2.0 * 10 ** (-(max_exponent_bits - 1) + i)).tolist()
        data += means + ([-m for m in means] if signed else [])
    if additional_items > 0:
        bounds = torch.linspace(0.1, 1, additional_items + 1, dtype=torch.float64)
        means = ((bounds[:-1] + bounds[1:]) / 2.0 * 10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)).tolist()
        data += means + ([-m for m in means] if signed else [])
    data += [0.0, 1.0]
    assert len(data) == 2**total_bits, (len(data), signed, max_exponent_bits, total_bits)
    return sorted(data)


def geometric_map(total_bits: int, octaves: float) -> list[float]:
    """``[0, 2^{−octaves}, …, 2^{−Δ}, 1]``: zero and ``2**total_bits − 1`` log-uniform levels, Δ = octaves / (L − 2)."""
    levels = 2**total_bits - 1
    step = octaves / (levels - 1)
    return [0.0] + [2.0 ** (-(levels - 1 - k) * step) for k in range(levels)]


@lru_cache(maxsize=None)
def _map_values(fmt: str, signed: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(code map, decision boundaries) as Python floats; boundaries are midpoints (geometric ones for unsigned)."""
    if signed:
        q = dynamic_map(True, SIGNED_EXPONENT_BITS[fmt], BITS[fmt])
        mids = [(a + b) / 2 for a, b in zip(q[:-1], q[1:])]
    else:
        q = geometric_map(BITS[fmt], UNSIGNED_OCTAVES[fmt])
        # any positive value goes to a positive code: the first boundary is 0 itself (a value > 0 passes it)
        mids = [0.0] + [math.sqrt(a * b) for a, b in zip(q[1:-1], q[2:])]
    return tuple(q), tuple(mids)


#: the encoder looks up |y| (y = x / absmax ∈ [−1, 1]) by the upper 16 bits of its fp32 pattern (its bf16 bucket):
#: buckets 0 … 0x3F80 (1.0); every code map here has relative level spacing > 2⁻⁷, so a bucket holds ≤ 1 boundary
_BUCKETS = 0x3F80 + 1


@lru_cache(maxsize=None)
def _abs_tables(fmt: str, signed: bool) -> tuple[list[int], list[float], int]:
    """For |y|: (rank of the first boundary ≥ each bucket's lower edge, the boundaries + [inf], offset of 0's code).

    The "magnitude map" is ``[0, positive levels…]`` (1.0 included); a magnitude's rank ``k`` in it is the count of its
    boundaries below ``|y|``. The final code is ``zero + k`` for ``y ≥ 0`` and ``zero − min(k, zero)`` for ``y < 0``
    (``zero`` = index of 0 in the sorted map; the signed map has no −1, its most negative level mirrors the largest
    level below 1).
    """
    q, _ = _map_values(fmt, signed)
    zero = q.index(0.0)
    mags = [0.0] + [v for v in q if v > 0]
    bounds = ([(a + b) / 2 for a, b in zip(mags[:-1], mags[1:])] if signed
              else [0.0] + [math.sqrt(a * b) for a, b in zip(mags[1:-1], mags[2:])])
    edges = torch.arange(_BUCKETS, dtype=torch.int32).bitwise_left_shift(16).view(torch.float32)
    bt = torch.tensor(bounds, dtype=torch.float32)
    lo = torch.searchsorted(bt, edges, right=False)  # boundaries strictly below the edge
    hi = torch.searchsorted(bt, torch.cat([edges[1:], torch.tensor([math.inf])]), right=False)
    assert int((hi - lo).max()) <= 1, (fmt, signed)  # ≤ 1 boundary per bucket: one comparison decides
    return lo.tolist(), [float(b) for b in bt.tolist()] + [math.inf], zero


_TABLES: dict[tuple[str, bool, str], tuple[Tensor, Tensor, Tensor]] = {}


def _tables(fmt: str, signed: bool, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(code map fp32, bucket → rank int32, boundaries fp32) on ``device``, cached (one host→device copy each)."""
    key = (fmt, signed, str(device))
    if key not in _TABLES:
        q, _ = _map_values(fmt, signed)
        lo, bounds, _ = _abs_tables(fmt, signed)
        _TABLES[key] = (torch.tensor(q, dtype=torch.float32, device=device),
                        torch.tensor(lo, dtype=torch.int32, device=device),
                        torch.tensor(bounds, dtype=torch.float32, device=device))
    return _TABLES[key]


def code_map(fmt: str, signed: bool) -> Tensor:
    """The code map of ``fmt``/``signed`` (fp32, CPU): ``decode`` returns ``scale · code_map[code]``."""
    _check(fmt, 1)
    return torch.tensor(_map_values(fmt, bool(signed))[0], dtype=torch.float32)


def codes_shape(shape: torch.Size | tuple[int, ...], fmt: str) -> torch.Size:
    """Shape of ``encode``'s codes for an input of ``shape``: the shape itself (int8) or ``(ceil(numel/2),)`` (int4)."""
    _check(fmt, 1)
    if fmt == "int8":
        return torch.Size(shape)
    return torch.Size(((math.prod(shape) + 1) // 2,))


def encoded_nbytes(shape: torch.Size | tuple[int, ...], fmt: str, block: int = 256) -> int:
    """Bytes ``encode`` stores for a tensor of ``shape``: codes (1 or ½ byte per element) + one fp32 scale per block."""
    _check(fmt, block)
    n = math.prod(shape)
    return math.prod(codes_shape(shape, fmt)) + 4 * ((n + block - 1) // block)


def _per_block(flat: Tensor, block: int, scales: Tensor, op: str) -> None:
    """In place, ``flat[i] op= scales[i // block]`` (``op`` ``"mul"`` or ``"div"``) without padding copies."""
    n = flat.numel()
    full = n // block
    head, tail = flat[: full * block].view(full, block), flat[full * block:]
    f = torch.Tensor.mul_ if op == "mul" else torch.Tensor.div_
    if full:
        f(head, scales[:full, None])
    if tail.numel():
        f(tail, scales[full])


def _absmax(flat: Tensor, block: int) -> Tensor:
    n = flat.numel()
    full = n // block
    parts = []
    if full:
        parts.append(flat[: full * block].view(full, block).abs().amax(1))
    if n - full * block:
        parts.append(flat[full * block:].abs().amax().reshape(1))
    if not parts:
        return flat.new_zeros(0)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def encode(x: Tensor, fmt: str, *, signed: bool, block: int = 256, stochastic: bool = False,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``(codes, scales)`` of ``x`` blockwise-quantized to ``fmt`` (``"int8"`` or ``"int4"``); see the module docstring.

    Args:
        x: any float tensor (any shape, any device, meta included); computed in fp32.
        fmt: ``"int8"`` (codes ``uint8``, ``x``'s shape) or ``"int4"`` (two codes per ``uint8``, flat).
        signed: ``True`` for a signed quantity (first moment, dynamic map); ``False`` for a non-negative one (second
            moment, geometric map; negative inputs are clamped to 0).
        block: elements per scale (default 256, as bitsandbytes' blockwise 8-bit optimizers); ≥ 1.
        stochastic: round each scaled value to one of its two neighbouring levels at random, unbiased
            (E[decode] = x), instead of to the nearest. Needed for int4 first moments: an EMA step smaller than half a
            level (β₁ = 0.9 moves m by 10 % of g − m; int4 levels are ~25 % apart) is otherwise rounded away every step
            and m stalls (toy regression: +40–80 % loss nearest, within ±7 % of fp32 stochastic). A positive value of
            an unsigned input never rounds to 0.
        generator: ``torch.Generator`` on ``x``'s device for the stochastic draws (``None``: the global one).

    Returns:
        ``codes`` (uint8) and ``scales`` (fp32, shape ``(ceil(numel / block),)``, the per-block absolute maximum).
    """
    _check(fmt, block)
    signed = bool(signed)
    _, lo, bounds = _tables(fmt, signed, x.device)
    zero = _abs_tables(fmt, signed)[2]
    y = x.detach().reshape(-1).to(torch.float32, copy=True)
    if not signed:
        y.clamp_(min=0)
    scales = _absmax(y, block)
    _per_block(y, block, scales.clamp(min=torch.finfo(torch.float32).tiny), "div")
    negative = y < 0 if signed else None
    a = y.abs() if stochastic else y.abs_()
    bucket = a.view(torch.int32).bitwise_right_shift(16).clamp_(max=_BUCKETS - 1)
    rank = lo.index_select(0, bucket)
    del bucket
    rank += a > bounds.index_select(0, rank)  # the one boundary that can lie inside the bucket
    del a
    if signed:
        rank = torch.where(negative, zero - rank.clamp(max=zero), rank + zero)
    del negative
    if stochastic:  # move to the other neighbour of y with probability |y − q[c]| / |q[o] − q[c]|
        q = _tables(fmt, signed, x.device)[0]
        qc = q.index_select(0, rank)
        other = torch.where(qc > y, rank - 1, rank + 1).clamp_(min=0 if signed else 1, max=q.numel() - 1)
        gap = q.index_select(0, other).sub_(qc)
        p = (y - qc).div_(gap).nan_to_num_(0.0, 0.0, 0.0).clamp_(0, 1)
        del qc, gap
        u = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype)
        rank = torch.where(u < p, other, rank)
        del u, p, other
    del y
    codes = rank.to(torch.uint8)
    del rank
    if fmt == "int8":
        return codes.view(x.shape), scales
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    return codes[0::2] | (codes[1::2] << 4), scales


def decode(codes: Tensor, scales: Tensor, shape: torch.Size | tuple[int, ...], fmt: str, *, signed: bool,
           block: int = 256) -> Tensor:
    """The fp32 tensor of ``shape`` that ``encode(x, fmt, signed=signed, block=block)`` stands for: ``s_b · q[c_i]``."""
    _check(fmt, block)
    shape = torch.Size(shape)
    n = math.prod(shape)
    q = _tables(fmt, bool(signed), codes.device)[0]
    flat = codes.reshape(-1)
    if fmt == "int4":
        flat = torch.stack([flat & 15, flat >> 4], dim=1).reshape(-1)[:n]
    out = q.index_select(0, flat.to(torch.int32))
    _per_block(out, block, scales, "mul")
    return out.view(shape)


def stochastic_round_(dst: Tensor, src_fp32: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``dst ← SR_bf16(src)``: round fp32 ``src`` to bf16 up or down at random, unbiased (E[dst] = src); returns ``dst``.

    The bf16 value is the fp32 bit pattern's upper 16 bits. Adding a uniform random integer in ``[0, 2¹⁶)`` to the
    pattern and truncating the lower 16 bits carries into the upper half with probability (lower bits) / 2¹⁶, i.e.
    rounds away from zero with exactly the probability that makes the result unbiased (as torchao's bf16 optimizers,
    ``_fp32_to_bf16_sr``; Gupta et al. 2015). NaN stays NaN; ±inf stays; a value within one bf16 ulp of the largest
    finite bf16 may round to inf, as round-to-nearest does.

    Args:
        dst: bf16 tensor to write (an fp32 ``dst`` receives a plain copy: nothing to round).
        src_fp32: fp32 tensor of ``dst``'s shape (the high-precision result of the update).
        generator: a ``torch.Generator`` on ``dst``'s device for reproducible draws; ``None`` uses the global one.
    """
    if dst.dtype == torch.float32:
        return dst.copy_(src_fp32)
    if dst.dtype != torch.bfloat16:
        raise TypeError(f"stochastic_round_ writes bf16 (or fp32) tensors, got dst of dtype {dst.dtype}.")
    if src_fp32.dtype != torch.float32:
        raise TypeError(f"stochastic_round_ needs an fp32 source, got {src_fp32.dtype}.")
    src = src_fp32.contiguous()
    noise = torch.randint(0, 1 << 16, src.shape, generator=generator, device=src.device, dtype=torch.int32)
    bits = noise.add_(src.view(torch.int32)).bitwise_and_(-65536)  # -65536 == 0xFFFF0000 as int32
    rounded = bits.view(torch.float32)
    rounded = torch.where(src.isnan(), src, rounded)
    return dst.copy_(rounded)
