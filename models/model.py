"""tern-tiny: a BitNet b1.58 decoder (PyTorch), quantisation-aware.

Layer (x = residual stream):
    n = attn_norm(x)
    x = x + Wo(attn_sub_norm(Attn(RoPE(Wq n), RoPE(Wk n), Wv n)))
    m = ffn_norm(x)
    x = x + Wdown(ffn_sub_norm(relu(Wgate m)^2 * Wup m))
logits = token_embd @ output_norm(x)

All seven projections are BitLinear (no bias): weights ternarised per tensor by
absmean, input activations quantised per token to int8 by absmax, both with
straight-through estimators. The activation quantisation of the input is done
once and shared by q/k/v and by gate/up.
"""
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    vocab_size: int = 2048
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 64
    d_ff: int = 768
    context: int = 512
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0

    def to_dict(self):
        return asdict(self)


def weight_quant(w):
    """Per-tensor absmean ternarisation. Returns (ternary in {-1,0,1}, scale)."""
    scale = w.abs().mean().clamp(min=1e-5)
    t = (w / scale).round().clamp(-1, 1)
    return t, scale


def act_quant(x):
    """Per-token absmax int8 fake quantisation with STE."""
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    q = (x * s).round().clamp(-128, 127) / s
    return x + (q - x).detach()


class BitLinear(nn.Linear):
    """Linear layer with ternary weights; expects an already act-quantised input."""

    def __init__(self, fin, fout):
        super().__init__(fin, fout, bias=False)

    def qweight(self):
        w = self.weight
        t, scale = weight_quant(w)
        return w + (t * scale - w).detach()

    def forward(self, xq):
        return F.linear(xq, self.qweight())


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_cache(cfg, device=None):
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim))
    pos = torch.arange(cfg.context, dtype=torch.float64)
    ang = torch.outer(pos, inv)  # (T, hd/2)
    ang = torch.cat([ang, ang], dim=-1)  # NEOX: rotate-half layout
    return ang.cos().float(), ang.sin().float()


def apply_rope(x, cos, sin):
    # x: (B, H, T, hd)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    rot = torch.cat([-x2, x1], dim=-1)
    return x * cos + rot * sin


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d, hd = cfg.d_model, cfg.head_dim
        self.attn_norm = RMSNorm(d, cfg.rms_eps)
        self.wq = BitLinear(d, cfg.n_heads * hd)
        self.wk = BitLinear(d, cfg.n_kv_heads * hd)
        self.wv = BitLinear(d, cfg.n_kv_heads * hd)
        self.attn_sub_norm = RMSNorm(cfg.n_heads * hd, cfg.rms_eps)
        self.wo = BitLinear(cfg.n_heads * hd, d)
        self.ffn_norm = RMSNorm(d, cfg.rms_eps)
        self.w_gate = BitLinear(d, cfg.d_ff)
        self.w_up = BitLinear(d, cfg.d_ff)
        self.ffn_sub_norm = RMSNorm(cfg.d_ff, cfg.rms_eps)
        self.w_down = BitLinear(cfg.d_ff, d)

    def forward(self, x, cos, sin):
        cfg = self.cfg
        B, T, _ = x.shape
        nq = act_quant(self.attn_norm(x))
        q = self.wq(nq).view(B, T, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        k = self.wk(nq).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.wv(nq).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        rep = cfg.n_heads // cfg.n_kv_heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        a = a.transpose(1, 2).reshape(B, T, cfg.n_heads * cfg.head_dim)
        x = x + self.wo(act_quant(self.attn_sub_norm(a)))
        mq = act_quant(self.ffn_norm(x))
        h = F.relu(self.w_gate(mq)).square() * self.w_up(mq)
        x = x + self.w_down(act_quant(self.ffn_sub_norm(h)))
        return x


class TernTiny(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.output_norm = RMSNorm(cfg.d_model, cfg.rms_eps)
        cos, sin = rope_cache(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        for b in self.blocks:
            for m in (b.wq, b.wk, b.wv, b.wo, b.w_gate, b.w_up, b.w_down):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.tok_emb(idx)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for b in self.blocks:
            x = b(x, cos, sin)
        x = self.output_norm(x)
        return F.linear(x, self.tok_emb.weight)
