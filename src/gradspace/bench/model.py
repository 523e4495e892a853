"""A small LLaMA-style decoder (RMSNorm, rotary positions, SwiGLU, untied head) for benchmarks and memory plans.

    h₀ = E[x];  h ← h + Attn(RMSNorm(h));  h ← h + W_down(SiLU(W_gate·n) ⊙ W_up·n), n = RMSNorm(h);  logits = W_head·RMSNorm(h)

Parameter names and shapes follow Hugging Face ``LlamaForCausalLM`` (``layers.{i}.self_attn.q_proj`` …, biases off,
untied head), so the ``attn``/``mlp`` routing of GaLore's scripts applies unchanged and a model built on the meta
device from one of the JSON configs in ``configs/`` has exactly the parameter shapes of the published LLaMA sizes.
No download, no ``transformers``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONFIG_DIR = Path(__file__).with_name("configs")


@dataclass
class LlamaConfig:
    """Shapes of the decoder; the field names are Hugging Face ``LlamaConfig``'s."""

    vocab_size: int = 256
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    initializer_range: float = 0.02

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LlamaConfig":
        """Keep the known keys of a (Hugging Face) config dict; unknown keys such as ``architectures`` are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def named_configs() -> dict[str, Path]:
    """``{"llama-60m": path, …}`` for the JSON configs shipped with the package."""
    return {p.stem.replace("_", "-"): p for p in sorted(CONFIG_DIR.glob("llama_*.json"))}


def load_config(name_or_path: str) -> LlamaConfig:
    """A shipped config by name (``llama-7b``) or a Hugging Face style ``config.json`` path."""
    configs = named_configs()
    key = name_or_path.lower().replace("_", "-")
    path = configs.get(key) or configs.get(f"llama-{key}")
    if path is None:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"no config named {name_or_path!r}; shipped: {sorted(configs)}, or give a config.json path.")
    return LlamaConfig.from_dict(json.loads(path.read_text()))


class RMSNorm(nn.Module):
    """y = x / √(mean(x²) + ε) · w  (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-6, device: Any = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary(x: Tensor, theta: float) -> Tensor:
    """Rotary position embedding (Su et al. 2021) of ``x`` (batch, heads, seq, head_dim), half-split pairing as LLaMA."""
    seq, dim = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    ang = torch.outer(torch.arange(seq, device=x.device, dtype=torch.float32), inv)
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1).to(x.dtype), torch.cat([ang.sin(), ang.sin()], -1).to(x.dtype)
    x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Attention(nn.Module):
    """Causal multi-head attention with rotary positions (scaled-dot-product kernel)."""

    def __init__(self, cfg: LlamaConfig, device: Any = None) -> None:
        super().__init__()
        h, self.heads, self.theta = cfg.hidden_size, cfg.num_attention_heads, cfg.rope_theta
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(h, h, bias=False, device=device) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b, t, h = x.shape
        q, k, v = (p(x).view(b, t, self.heads, h // self.heads).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(rotary(q, self.theta), rotary(k, self.theta), v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, h))


class MLP(nn.Module):
    """SwiGLU feed-forward: W_down(SiLU(W_gate x) ⊙ W_up x) (Shazeer 2020)."""

    def __init__(self, cfg: LlamaConfig, device: Any = None) -> None:
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=False, device=device)
        self.up_proj = nn.Linear(h, i, bias=False, device=device)
        self.down_proj = nn.Linear(i, h, bias=False, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: attention then SwiGLU."""

    def __init__(self, cfg: LlamaConfig, device: Any = None) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device)
        self.self_attn = Attention(cfg, device)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device)
        self.mlp = MLP(cfg, device)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class TinyLlama(nn.Module):
    """Decoder-only LM; ``forward(ids)`` returns logits (batch, seq, vocab). Weights ~ N(0, 0.02²), norms 1."""

    def __init__(self, cfg: LlamaConfig, device: Any = None) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, device=device)
        self.layers = nn.ModuleList(Block(cfg, device) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device=device)
        if self.lm_head.weight.device.type != "meta":
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=cfg.initializer_range)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))

    def loss(self, ids: Tensor) -> Tensor:
        """Mean next-token cross-entropy (nats) of a (batch, seq + 1) token block."""
        logits = self(ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
