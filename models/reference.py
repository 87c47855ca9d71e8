#!/usr/bin/env python3
"""Plain numpy forward pass of tern-tiny, reading only the GGUF file.

Independent of the PyTorch training code: weights come from gguf-py's
GGUFReader and `gguf.quants.dequantize`; the forward pass follows the BitNet
b1.58 equations directly, in float32, with integer activation codes:

    s  = 127 / max(max|x|, 1e-5)            (per token)
    xq = clip(round_half_even(x * s), -128, 127)
    y  = (xq @ T.T) * (w_scale / s)          (T ternary, w_scale per tensor)

Usage: python reference.py [--gguf tern-tiny.gguf] "some prompt"
"""
import argparse
import os

import numpy as np
import gguf
from gguf import GGUFReader

HERE = os.path.dirname(os.path.abspath(__file__))
ARCH = "bitnet-b1.58"


def field(reader, key):
    f = reader.fields[key]
    if len(f.data) == 1:
        v = f.parts[f.data[0]]
        if f.types and f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(v).decode("utf-8")
        return v.item() if hasattr(v, "item") else v[0]
    return [bytes(f.parts[i]).decode("utf-8") if f.types[-1] == gguf.GGUFValueType.STRING
            else f.parts[i].item() for i in f.data]


class TernaryLinear:
    def __init__(self, deq):
        scale = np.float32(np.abs(deq).max())
        self.scale = scale if scale > 0 else np.float32(1.0)
        self.t = np.rint(deq / self.scale).astype(np.float32)  # exact {-1,0,1}
        assert np.array_equal(self.t * self.scale, deq)

    def __call__(self, x):
        s = np.float32(127.0) / np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(1e-5))
        xq = np.clip(np.rint(x * s), -128, 127).astype(np.float32)  # integer codes
        acc = xq @ self.t.T  # exact: integers well below 2^24
        return acc * (self.scale / s)


class Reference:
    def __init__(self, path):
        r = GGUFReader(path)
        self.reader = r
        g = lambda k: field(r, f"{ARCH}.{k}")
        self.n_layers = int(g("block_count"))
        self.d = int(g("embedding_length"))
        self.n_heads = int(g("attention.head_count"))
        self.n_kv = int(g("attention.head_count_kv"))
        self.hd = int(g("rope.dimension_count"))
        self.eps = np.float32(g("attention.layer_norm_rms_epsilon"))
        self.theta = float(g("rope.freq_base"))
        self.ctx = int(g("context_length"))
        self.bos = int(field(r, "tokenizer.ggml.bos_token_id"))
        self.tokens = field(r, "tokenizer.ggml.tokens")
        T = {}
        for t in r.tensors:
            if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                a = np.array(t.data, dtype=np.float32)
            else:
                a = gguf.quants.dequantize(np.array(t.data), t.tensor_type).astype(np.float32)
            T[t.name] = a.reshape(tuple(int(x) for x in reversed(t.shape)))
        self.emb = T["token_embd.weight"]
        self.out_norm = T["output_norm.weight"]
        self.layers = []
        for i in range(self.n_layers):
            p = f"blk.{i}."
            L = {k: T[p + k + ".weight"] for k in
                 ("attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm")}
            for k in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
                L[k] = TernaryLinear(T[p + k + ".weight"])
            self.layers.append(L)
        inv = 1.0 / (self.theta ** (np.arange(0, self.hd, 2, dtype=np.float64) / self.hd))
        ang = np.outer(np.arange(self.ctx, dtype=np.float64), inv)
        ang = np.concatenate([ang, ang], axis=-1)
        self.cos = np.cos(ang).astype(np.float32)
        self.sin = np.sin(ang).astype(np.float32)

    def rms(self, x, w):
        return (x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps)) * w

    def rope(self, x):  # x: (H, T, hd), NEOX rotate-half
        T = x.shape[1]
        h = self.hd // 2
        rot = np.concatenate([-x[..., h:], x[..., :h]], axis=-1)
        return x * self.cos[:T] + rot * self.sin[:T]

    def forward(self, ids):
        """Returns logits (T, vocab) in float32."""
        ids = np.asarray(ids)
        T = len(ids)
        x = self.emb[ids].astype(np.float32)
        mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
        rep = self.n_heads // self.n_kv
        for L in self.layers:
            n = self.rms(x, L["attn_norm"])
            q = L["attn_q"](n).reshape(T, self.n_heads, self.hd).transpose(1, 0, 2)
            k = L["attn_k"](n).reshape(T, self.n_kv, self.hd).transpose(1, 0, 2)
            v = L["attn_v"](n).reshape(T, self.n_kv, self.hd).transpose(1, 0, 2)
            q, k = self.rope(q), self.rope(k)
            k = np.repeat(k, rep, axis=0)
            v = np.repeat(v, rep, axis=0)
            att = (q @ k.transpose(0, 2, 1)) / np.float32(np.sqrt(self.hd)) + mask
            att = np.exp(att - att.max(-1, keepdims=True))
            att = att / att.sum(-1, keepdims=True)
            a = (att @ v).transpose(1, 0, 2).reshape(T, self.n_heads * self.hd)
            x = x + L["attn_output"](self.rms(a, L["attn_sub_norm"]))
            m = self.rms(x, L["ffn_norm"])
            h = np.square(np.maximum(L["ffn_gate"](m), 0)) * L["ffn_up"](m)
            x = x + L["ffn_down"](self.rms(h, L["ffn_sub_norm"]))
        x = self.rms(x, self.out_norm)
        return x @ self.emb.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.join(HERE, "tern-tiny.gguf"))
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "tokenizer.json"))
    ap.add_argument("prompt", nargs="?", default="To be, or not to be")
    args = ap.parse_args()
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(args.tokenizer)
    ref = Reference(args.gguf)
    ids = [ref.bos] + tok.encode(args.prompt, add_special_tokens=False).ids
    logits = ref.forward(ids)
    top = np.argsort(-logits[-1])[:5]
    print("ids", ids)
    print("argmax per position", logits.argmax(-1).tolist())
    print("top-5 next:", [(int(i), tok.id_to_token(int(i)), float(logits[-1, i])) for i in top])


if __name__ == "__main__":
    main()
