#!/usr/bin/env python3
"""Export a tern-tiny checkpoint to GGUF (`tern-tiny.gguf`).

Deterministic: the same checkpoint and tokenizer always give the same bytes
(no timestamps, fixed key and tensor order).

* general.architecture = "bitnet-b1.58", hyper-parameters under that prefix
* byte-level BPE tokenizer (`tokenizer.ggml.model` = "gpt2") with the chat template
* token_embd.weight F16 (also the output head), norms F32
* the 7 projections of each block as TQ2_0: per-tensor absmean ternarisation
  (as in training), the tensor scale rounded to f16, then `ternary * scale` is
  quantised so every TQ2_0 block's `d` is exactly that scale (all-zero blocks
  have d = 0).
"""
import argparse
import json
import os

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType, GGUFWriter, TokenType

HERE = os.path.dirname(os.path.abspath(__file__))
ARCH = "bitnet-b1.58"
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)

# (our module name, GGUF name)
PROJ = [("wq", "attn_q"), ("wk", "attn_k"), ("wv", "attn_v"), ("wo", "attn_output"),
        ("w_gate", "ffn_gate"), ("w_up", "ffn_up"), ("w_down", "ffn_down")]
NORMS = [("attn_norm", "attn_norm"), ("attn_sub_norm", "attn_sub_norm"),
         ("ffn_norm", "ffn_norm"), ("ffn_sub_norm", "ffn_sub_norm")]


def ternarise(w: torch.Tensor):
    """Same arithmetic as model.weight_quant; returns (int8 ternary, f16-exact scale)."""
    w = w.detach().float()
    scale = w.abs().mean().clamp(min=1e-5)
    t = (w / scale).round().clamp(-1, 1)
    return t.to(torch.int8).numpy(), float(np.float16(scale.item()))


def load_tokenizer(path):
    tj = json.load(open(path, encoding="utf-8"))
    vocab = dict(tj["model"]["vocab"])
    for a in tj["added_tokens"]:
        vocab[a["content"]] = a["id"]
    n = max(vocab.values()) + 1
    tokens = [None] * n
    for s, i in vocab.items():
        tokens[i] = s
    assert all(t is not None for t in tokens), "vocab ids must be contiguous"
    special = {a["content"] for a in tj["added_tokens"] if a.get("special")}
    types = [TokenType.CONTROL if t in special else TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    return tokens, types, merges


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=os.path.join(HERE, "tern-tiny.pt"))
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "tokenizer.json"))
    ap.add_argument("--out", default=os.path.join(HERE, "tern-tiny.gguf"))
    args = ap.parse_args()

    ck = torch.load(args.ckpt, map_location="cpu")
    cfg = ck["config"]
    sd = ck["model"]
    tokens, types, merges = load_tokenizer(args.tokenizer)
    assert len(tokens) == cfg["vocab_size"]
    bos, eos, eot = (tokens.index(s) for s in SPECIALS)

    w = GGUFWriter(args.out, ARCH)
    w.add_name("tern-tiny")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_TQ2_0)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(cfg["context"])
    w.add_embedding_length(cfg["d_model"])
    w.add_block_count(cfg["n_layers"])
    w.add_feed_forward_length(cfg["d_ff"])
    w.add_rope_dimension_count(cfg["head_dim"])
    w.add_head_count(cfg["n_heads"])
    w.add_head_count_kv(cfg["n_kv_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_vocab_size(cfg["vocab_size"])

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_eot_token_id(eot)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE)

    w.add_tensor("token_embd.weight", sd["tok_emb.weight"].float().numpy().astype(np.float16))
    for i in range(cfg["n_layers"]):
        p = f"blocks.{i}."
        for ours, name in NORMS[:1]:
            w.add_tensor(f"blk.{i}.{name}.weight", sd[p + ours + ".weight"].float().numpy())
        for ours, name in PROJ:
            t, scale = ternarise(sd[p + ours + ".weight"])
            arr = t.astype(np.float32) * np.float32(scale)
            q = gguf.quants.quantize(arr, GGMLQuantizationType.TQ2_0)
            # every block's d must equal the tensor scale (or 0 for all-zero blocks)
            back = gguf.quants.dequantize(q, GGMLQuantizationType.TQ2_0)
            assert back.shape == arr.shape and np.array_equal(back, arr), name
            w.add_tensor(f"blk.{i}.{name}.weight", q, raw_dtype=GGMLQuantizationType.TQ2_0)
        for ours, name in NORMS[1:]:
            w.add_tensor(f"blk.{i}.{name}.weight", sd[p + ours + ".weight"].float().numpy())
    w.add_tensor("output_norm.weight", sd["output_norm.weight"].float().numpy())

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    size = os.path.getsize(args.out)
    print(f"wrote {args.out}: {size} bytes (step {ck['step']}, val_loss {ck.get('val_loss')})")
    assert size < 4 * 1024 * 1024


if __name__ == "__main__":
    main()
