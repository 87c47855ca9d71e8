#!/usr/bin/env python3
"""Plain numpy reference forward pass for ternary BitNet GGUF models.

Written directly from the model equations so that the Rust engine can be
checked against something that shares no code with it. Slow and simple on
purpose: every matrix is dequantised to float64 and every step is spelled out.

Supported architectures (``general.architecture``):

* ``bitnet-b1.58``: FFN activation ``relu(g)^2 * u``.
* ``bitnet`` (mainline llama.cpp naming): FFN activation ``silu(g) * u``;
  optional one-element F32 tensors ``blk.N.<proj>.scale`` multiply the
  weight of that projection.

Supported tensor types: F32, F16, BF16, Q8_0, TQ1_0, TQ2_0 (decoded by
gguf-py) and I2_S (type id 36, decoded here).

Library use::

    from bitnet_ref import load_model, logits
    m = load_model("tests/fixtures/tiny-tq2_0.gguf")
    out = logits(m, [297, 10, 20])        # np.ndarray (3, vocab), float64

``logits`` also accepts a path instead of a loaded model.

Command line::

    python3 tests/reference/bitnet_ref.py MODEL.gguf 297 10 20 [--top 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType, GGML_QUANT_SIZES
from gguf.constants import GGUFValueType
import gguf.quants

I2_S_TYPE = 36
I2_S_BLOCK = 128  # elements per packed block of 32 bytes
I2_S_TAIL = 32  # f32 scale + 28 pad bytes after the packed data

PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


# --------------------------------------------------------------------------
# GGUF reading
# --------------------------------------------------------------------------

@dataclass
class RawTensor:
    name: str
    type_id: int
    ne: tuple[int, ...]  # GGUF dims, ne[0] is the fastest-varying (row length)
    data: np.ndarray  # uint8, exactly the tensor's bytes

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64))

    @property
    def np_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))


def tensor_nbytes(type_id: int, ne: Sequence[int]) -> int:
    """Byte size of a tensor of the given GGML type and dims."""
    n = int(np.prod(ne, dtype=np.int64))
    if type_id == I2_S_TYPE:
        if n % I2_S_BLOCK != 0:
            raise ValueError(f"I2_S tensor with {n} elements is not a multiple of {I2_S_BLOCK}")
        return n // 4 + I2_S_TAIL
    qtype = GGMLQuantizationType(type_id)
    block, tsize = GGML_QUANT_SIZES[qtype]
    if ne[0] % block != 0:
        raise ValueError(f"row length {ne[0]} not a multiple of the {qtype.name} block size {block}")
    return n // block * tsize


class TernaryGGUFReader(GGUFReader):
    """gguf-py's reader, taught the size rule of I2_S (type 36).

    gguf-py does not know type 36, so tensor records are built here instead
    of by the base class. Metadata parsing is left to gguf-py.
    """

    raw_tensors: dict[str, RawTensor]

    def _build_tensors(self, start_offs: int, fields: list) -> None:
        self.raw_tensors = {}
        for f in fields:
            _name_len, name_data, _n_dims, dims, raw_dtype, offset_tensor = f.parts
            name = bytes(name_data).decode("utf-8")
            if name in self.raw_tensors:
                raise ValueError(f"duplicate tensor {name}")
            type_id = int(raw_dtype[0])
            ne = tuple(int(d) for d in dims)
            nbytes = tensor_nbytes(type_id, ne)
            offs = int(start_offs + offset_tensor[0])
            if offs % self.alignment != 0:
                raise ValueError(f"tensor {name} at unaligned offset {offs}")
            if offs + nbytes > len(self.data):
                raise ValueError(f"tensor {name} runs past the end of the file")
            data = np.asarray(self.data[offs:offs + nbytes], dtype=np.uint8)
            self.raw_tensors[name] = RawTensor(name, type_id, ne, data)
        self.tensors = []


def field_value(reader: GGUFReader, key: str, default: Any = None) -> Any:
    f = reader.get_field(key)
    if f is None:
        return default
    if f.types and f.types[0] == GGUFValueType.ARRAY:
        if len(f.types) > 1 and f.types[1] == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if f.types[0] == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]].tolist()[0]


# --------------------------------------------------------------------------
# Dequantisation
# --------------------------------------------------------------------------

def decode_i2s(data: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """Decode an I2_S tensor's bytes into (ternary values int8 [n], scale).

    Layout: blocks of 128 elements packed into 32 bytes; byte j of block b
    holds element 128b+j in bits 7:6, 128b+32+j in bits 5:4, 128b+64+j in
    bits 3:2 and 128b+96+j in bits 1:0. Codes 0,1,2 mean -1,0,+1. The packed
    data is followed by one little-endian f32 scale and 28 pad bytes.
    """
    data = np.asarray(data, dtype=np.uint8)
    if data.size != n // 4 + I2_S_TAIL:
        raise ValueError(f"I2_S: expected {n // 4 + I2_S_TAIL} bytes for {n} elements, got {data.size}")
    packed = data[: n // 4].reshape(-1, 32)
    scale = float(data[n // 4: n // 4 + 4].view("<f4")[0])
    shifts = np.array([6, 4, 2, 0], dtype=np.uint8)
    codes = (packed[:, None, :] >> shifts[None, :, None]) & 3  # (blocks, 4 groups, 32)
    if np.any(codes == 3):
        raise ValueError("I2_S: code 3 is not a valid ternary code")
    values = codes.reshape(-1).astype(np.int8) - 1
    return values, scale


def encode_i2s(values: np.ndarray, scale: float) -> bytes:
    """Inverse of decode_i2s: ternary values (any shape, row-major) -> bytes."""
    v = np.asarray(values).reshape(-1)
    if v.size % I2_S_BLOCK != 0:
        raise ValueError("I2_S needs a multiple of 128 elements")
    if not np.all(np.isin(v, (-1, 0, 1))):
        raise ValueError("I2_S values must be ternary")
    codes = (v.astype(np.int16) + 1).astype(np.uint8).reshape(-1, 4, 32)
    packed = (codes[:, 0] << 6) | (codes[:, 1] << 4) | (codes[:, 2] << 2) | codes[:, 3]
    tail = np.float32(scale).astype("<f4").tobytes() + bytes(I2_S_TAIL - 4)
    return packed.astype(np.uint8).tobytes() + tail


def dequantize(t: RawTensor) -> np.ndarray:
    """Dequantise a tensor to float64 with numpy shape reversed(ne)."""
    if t.type_id == I2_S_TYPE:
        values, scale = decode_i2s(t.data, t.n_elements)
        return (values.astype(np.float64) * np.float64(scale)).reshape(t.np_shape)
    qtype = GGMLQuantizationType(t.type_id)
    rows = t.data.reshape(-1, tensor_nbytes(t.type_id, (t.ne[0],)))
    if qtype == GGMLQuantizationType.F32:
        out = rows.view("<f4")
    elif qtype == GGMLQuantizationType.F16:
        out = rows.view("<f2")
    else:
        out = gguf.quants.dequantize(rows, qtype)
    return np.asarray(out, dtype=np.float64).reshape(t.np_shape)


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

@dataclass
class Layer:
    attn_norm: np.ndarray
    attn_sub_norm: np.ndarray
    ffn_norm: np.ndarray
    ffn_sub_norm: np.ndarray
    w: dict[str, np.ndarray]  # projection name -> (out, in) float64, scale folded in


@dataclass
class Model:
    path: str
    arch: str
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx: int
    n_vocab: int
    eps: float
    rope_theta: float
    rope_dim: int
    activation: str  # "relu2" or "silu"
    token_embd: np.ndarray  # (vocab, n_embd)
    output_norm: np.ndarray
    output: np.ndarray  # (vocab, n_embd), token_embd unless output.weight exists
    layers: list[Layer] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    tensor_types: dict[str, int] = field(default_factory=dict)


ACTIVATIONS = {"bitnet-b1.58": "relu2", "bitnet-25": "relu2", "bitnet": "silu"}


def load_model(path: str) -> Model:
    r = TernaryGGUFReader(path)
    arch = field_value(r, "general.architecture")
    if arch not in ACTIVATIONS:
        raise ValueError(f"unsupported architecture {arch!r}")

    def hp(key: str, default: Any = None) -> Any:
        v = field_value(r, f"{arch}.{key}", default)
        if v is None:
            raise KeyError(f"missing metadata {arch}.{key}")
        return v

    raw = r.raw_tensors

    def get(name: str) -> np.ndarray:
        if name not in raw:
            raise KeyError(f"missing tensor {name}")
        return dequantize(raw[name])

    n_embd = int(hp("embedding_length"))
    n_head = int(hp("attention.head_count"))
    head_dim = int(hp("attention.key_length", n_embd // n_head))
    token_embd = get("token_embd.weight")
    n_vocab = int(hp("vocab_size", token_embd.shape[0]))
    m = Model(
        path=str(path),
        arch=arch,
        n_embd=n_embd,
        n_layer=int(hp("block_count")),
        n_head=n_head,
        n_head_kv=int(hp("attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_ff=int(hp("feed_forward_length")),
        n_ctx=int(hp("context_length")),
        n_vocab=n_vocab,
        eps=float(hp("attention.layer_norm_rms_epsilon")),
        rope_theta=float(hp("rope.freq_base", 10000.0)),
        rope_dim=int(hp("rope.dimension_count", head_dim)),
        activation=ACTIVATIONS[arch],
        token_embd=token_embd,
        output_norm=get("output_norm.weight"),
        output=get("output.weight") if "output.weight" in raw else token_embd,
        metadata={k: field_value(r, k) for k in r.fields if not k.startswith("GGUF.")},
        tensor_types={k: t.type_id for k, t in raw.items()},
    )
    if m.n_head % m.n_head_kv != 0:
        raise ValueError("head_count must be a multiple of head_count_kv")
    if m.rope_dim % 2 != 0 or m.rope_dim > head_dim:
        raise ValueError("bad rope.dimension_count")
    if token_embd.shape != (n_vocab, n_embd) or m.output.shape != (n_vocab, n_embd):
        raise ValueError("embedding / output shape does not match vocab_size x embedding_length")

    q_dim = m.n_head * head_dim
    kv_dim = m.n_head_kv * head_dim
    shapes = {
        "attn_q": (q_dim, n_embd), "attn_k": (kv_dim, n_embd), "attn_v": (kv_dim, n_embd),
        "attn_output": (n_embd, q_dim), "ffn_gate": (m.n_ff, n_embd), "ffn_up": (m.n_ff, n_embd),
        "ffn_down": (n_embd, m.n_ff),
    }
    for i in range(m.n_layer):
        p = f"blk.{i}."
        w = {}
        for proj in PROJECTIONS:
            wt = get(p + proj + ".weight")
            if wt.shape != shapes[proj]:
                raise ValueError(f"{p}{proj}.weight has shape {wt.shape}, expected {shapes[proj]}")
            sname = p + proj + ".scale"
            if sname in raw:
                s = get(sname).reshape(-1)
                if s.size != 1:
                    raise ValueError(f"{sname} must hold exactly one number")
                wt = wt * s[0]
            w[proj] = wt
        m.layers.append(Layer(
            attn_norm=get(p + "attn_norm.weight"),
            attn_sub_norm=get(p + "attn_sub_norm.weight"),
            ffn_norm=get(p + "ffn_norm.weight"),
            ffn_sub_norm=get(p + "ffn_sub_norm.weight"),
            w=w,
        ))
    return m


# --------------------------------------------------------------------------
# Forward pass
# --------------------------------------------------------------------------

def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x: (T, d) -> x / sqrt(mean(x^2) + eps) * w, per row."""
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(ms + eps) * w


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row absmax int8 quantisation: returns (q as float, s) with x ~ q / s."""
    amax = np.max(np.abs(x), axis=-1, keepdims=True)
    s = x.dtype.type(127.0) / np.maximum(amax, x.dtype.type(1e-5))
    q = np.clip(np.round(x * s), -128, 127)  # np.round: half to even
    return q, s


def bitlinear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x: (T, in), w: (out, in) dequantised weights -> (T, out)."""
    q, s = quantize_activations(x)
    return (q @ w.T) / s


def rope_neox(x: np.ndarray, positions: np.ndarray, theta: float, rot_dim: int) -> np.ndarray:
    """Rotate-half RoPE. x: (T, heads, head_dim). Rotates the first rot_dim dims."""
    half = rot_dim // 2
    i = np.arange(half, dtype=np.float64)
    freq = float(theta) ** (-2.0 * i / rot_dim)
    ang = positions.astype(np.float64)[:, None] * freq[None, :]  # (T, half)
    cos = np.cos(ang).astype(x.dtype)[:, None, :]
    sin = np.sin(ang).astype(x.dtype)[:, None, :]
    out = x.copy()
    x0 = x[..., :half]
    x1 = x[..., half:rot_dim]
    out[..., :half] = x0 * cos - x1 * sin
    out[..., half:rot_dim] = x0 * sin + x1 * cos
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """Causal GQA attention. q: (T, n_head, hd), k/v: (T, n_head_kv, hd) -> (T, n_head*hd)."""
    T, _, hd = q.shape
    group = n_head // n_head_kv
    scale = q.dtype.type(1.0 / np.sqrt(hd))
    out = np.empty_like(q)
    mask = np.triu(np.ones((T, T), dtype=bool), k=1)
    for h in range(n_head):
        kh = h // group
        scores = (q[:, h, :] @ k[:, kh, :].T) * scale  # (T, T)
        scores = np.where(mask, -np.inf, scores)
        scores = scores - scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p = p / p.sum(axis=-1, keepdims=True)
        out[:, h, :] = p @ v[:, kh, :]
    return out.reshape(T, n_head * hd)


def activation(g: np.ndarray, u: np.ndarray, kind: str) -> np.ndarray:
    if kind == "relu2":
        r = np.maximum(g, 0)
        return r * r * u
    if kind == "silu":
        return g / (1 + np.exp(-g)) * u
    raise ValueError(kind)


def forward(m: Model, token_ids: Sequence[int], dtype: Any = np.float64,
            kv_dtype: Any = None, perturb: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Logits for every position of token_ids: (n_tokens, vocab).

    dtype=np.float64 is the reference. dtype=np.float32 runs the same
    equations in single precision, and kv_dtype=np.float16 additionally
    rounds K (after RoPE) and V to half precision, as an f16 KV cache would;
    perturb, if given, is applied to every BitLinear input before it is
    quantised (to measure how sensitive the logits are to rounding). These
    options exist only to size test tolerances.
    """
    ids = np.asarray(list(token_ids), dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError("token_ids must be a non-empty 1-D sequence")
    if ids.min() < 0 or ids.max() >= m.n_vocab:
        raise ValueError("token id out of range")
    if ids.size > m.n_ctx:
        raise ValueError(f"{ids.size} tokens exceed context length {m.n_ctx}")
    T = ids.size
    hd = m.head_dim
    c = (lambda a: a.astype(dtype))
    pos = np.arange(T)

    def proj(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return bitlinear(perturb(x) if perturb is not None else x, w)

    x = c(m.token_embd[ids])
    for L in m.layers:
        w = {k: c(v) for k, v in L.w.items()}
        n = rms_norm(x, c(L.attn_norm), m.eps)
        q = proj(n, w["attn_q"]).reshape(T, m.n_head, hd)
        k = proj(n, w["attn_k"]).reshape(T, m.n_head_kv, hd)
        v = proj(n, w["attn_v"]).reshape(T, m.n_head_kv, hd)
        q = rope_neox(q, pos, m.rope_theta, m.rope_dim)
        k = rope_neox(k, pos, m.rope_theta, m.rope_dim)
        if kv_dtype is not None:
            k = k.astype(kv_dtype).astype(dtype)
            v = v.astype(kv_dtype).astype(dtype)
        a = attention(q, k, v, m.n_head, m.n_head_kv)
        x = x + proj(rms_norm(a, c(L.attn_sub_norm), m.eps), w["attn_output"])
        mm = rms_norm(x, c(L.ffn_norm), m.eps)
        g = proj(mm, w["ffn_gate"])
        u = proj(mm, w["ffn_up"])
        h = activation(g, u, m.activation)
        x = x + proj(rms_norm(h, c(L.ffn_sub_norm), m.eps), w["ffn_down"])
    xn = rms_norm(x, c(m.output_norm), m.eps)
    return xn @ c(m.output).T


def forward_incremental(m: Model, token_ids: Sequence[int]) -> np.ndarray:
    """Same logits as forward(), one token at a time with a K/V cache.

    Mirrors how an engine decodes; used to check that prefill and step-wise
    decoding agree. float64 only.
    """
    ids = [int(t) for t in token_ids]
    hd = m.head_dim
    group = m.n_head // m.n_head_kv
    k_cache: list[list[np.ndarray]] = [[] for _ in m.layers]  # per layer, per position: (n_kv, hd)
    v_cache: list[list[np.ndarray]] = [[] for _ in m.layers]
    rows = []
    for p, tok in enumerate(ids):
        x = m.token_embd[tok][None, :].astype(np.float64)
        pos = np.array([p])
        for li, L in enumerate(m.layers):
            n = rms_norm(x, L.attn_norm, m.eps)
            q = rope_neox(bitlinear(n, L.w["attn_q"]).reshape(1, m.n_head, hd), pos, m.rope_theta, m.rope_dim)[0]
            k = rope_neox(bitlinear(n, L.w["attn_k"]).reshape(1, m.n_head_kv, hd), pos, m.rope_theta, m.rope_dim)[0]
            v = bitlinear(n, L.w["attn_v"]).reshape(m.n_head_kv, hd)
            k_cache[li].append(k)
            v_cache[li].append(v)
            K = np.stack(k_cache[li])  # (p+1, n_kv, hd)
            V = np.stack(v_cache[li])
            a = np.empty((m.n_head, hd))
            for h in range(m.n_head):
                s = K[:, h // group, :] @ q[h] / np.sqrt(hd)
                e = np.exp(s - s.max())
                a[h] = (e / e.sum()) @ V[:, h // group, :]
            x = x + bitlinear(rms_norm(a.reshape(1, -1), L.attn_sub_norm, m.eps), L.w["attn_output"])
            mm = rms_norm(x, L.ffn_norm, m.eps)
            h_ = activation(bitlinear(mm, L.w["ffn_gate"]), bitlinear(mm, L.w["ffn_up"]), m.activation)
            x = x + bitlinear(rms_norm(h_, L.ffn_sub_norm, m.eps), L.w["ffn_down"])
        rows.append((rms_norm(x, m.output_norm, m.eps) @ m.output.T)[0])
    return np.stack(rows)


def logits(model: Model | str, token_ids: Sequence[int]) -> np.ndarray:
    """Reference logits (float64) at every position: shape (n_tokens, vocab)."""
    m = load_model(model) if isinstance(model, str) else model
    return forward(m, token_ids, np.float64)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="numpy reference forward pass for ternary BitNet GGUF files")
    ap.add_argument("model", help="path to a .gguf file")
    ap.add_argument("tokens", nargs="+", type=int, help="token ids")
    ap.add_argument("--top", type=int, default=5, help="top-k logits to print per position")
    ap.add_argument("--json", action="store_true", help="print full logits as JSON")
    args = ap.parse_args(argv)

    m = load_model(args.model)
    out = logits(m, args.tokens)
    if args.json:
        json.dump({"tokens": args.tokens, "logits": out.tolist(),
                   "argmax": out.argmax(axis=-1).tolist()}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    print(f"{args.model}: arch={m.arch} layers={m.n_layer} embd={m.n_embd} heads={m.n_head}/{m.n_head_kv} "
          f"ff={m.n_ff} vocab={m.n_vocab} act={m.activation}")
    for i, (tok, row) in enumerate(zip(args.tokens, out)):
        top = np.argsort(-row, kind="stable")[: args.top]
        desc = " ".join(f"{int(t)}:{row[t]:.5f}" for t in top)
        print(f"pos {i:3d} tok {tok:6d} -> {desc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
