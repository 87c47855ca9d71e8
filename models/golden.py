#!/usr/bin/env python3
"""Write `golden.json`: reference tokenisation and logits for fixed prompts.

The logits come from Hugging Face transformers' `BitNetForCausalLM`, built
from the GGUF file alone (weights via gguf-py's GGUFReader + dequantize):
its projections are `AutoBitLinear` in offline mode, i.e.
`linear(ActQuant(x), T) * weight_scale` with T the ternary matrix and
weight_scale the tensor's TQ2_0 block scale; ActQuant is per-token absmax
int8 with round-half-to-even. Attention is the eager implementation.

Cross-checks, recorded in golden.json:
  * the numpy reference (`reference.py`) on the same GGUF,
  * the PyTorch training model (`model.py`) in eval mode from the checkpoint
    (differences there come only from the f16 rounding of the embedding and
    of the ternary scales in the export).
"""
import argparse
import hashlib
import json
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # run transformers' BitNet ops eagerly
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
import gguf
import jinja2
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))

PROMPTS = [
    {"name": "hamlet", "kind": "text", "text": "To be, or not to be, that is the question:"},
    {"name": "genesis", "kind": "text", "text": "In the beginning God created the heaven and the earth."},
    {"name": "scene", "kind": "text",
     "text": "ROMEO.\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\nJULIET.\n"},
    {"name": "chat", "kind": "chat",
     "messages": [{"role": "system", "content": "Speak as a gentle courtier."},
                  {"role": "user", "content": "Good morrow, my lord. What news from the court?"}]},
]


def build_hf(ref):
    from transformers import BitNetConfig, BitNetForCausalLM
    from transformers.integrations.bitnet import AutoBitLinear

    cfg = BitNetConfig(
        vocab_size=ref.emb.shape[0], hidden_size=ref.d, intermediate_size=ref.layers[0]["ffn_up"].t.shape[0],
        num_hidden_layers=ref.n_layers, num_attention_heads=ref.n_heads, num_key_value_heads=ref.n_kv,
        hidden_act="relu2", max_position_embeddings=ref.ctx, rms_norm_eps=float(ref.eps),
        rope_parameters={"rope_type": "default", "rope_theta": ref.theta},
        tie_word_embeddings=True, bos_token_id=ref.bos, eos_token_id=1, pad_token_id=None,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = BitNetForCausalLM(cfg).float().eval()
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.from_numpy(ref.emb))
        model.model.norm.weight.copy_(torch.from_numpy(ref.out_norm))
        for i, layer in enumerate(model.model.layers):
            L = ref.layers[i]
            layer.input_layernorm.weight.copy_(torch.from_numpy(L["attn_norm"]))
            layer.post_attention_layernorm.weight.copy_(torch.from_numpy(L["ffn_norm"]))
            layer.self_attn.attn_sub_norm.weight.copy_(torch.from_numpy(L["attn_sub_norm"]))
            layer.mlp.ffn_sub_norm.weight.copy_(torch.from_numpy(L["ffn_sub_norm"]))
            for parent in (layer.self_attn, layer.mlp):
                for hf_name, gg in names.items():
                    if not hasattr(parent, hf_name):
                        continue
                    old = getattr(parent, hf_name)
                    new = AutoBitLinear(old.in_features, old.out_features, bias=False,
                                        dtype=torch.float32, online_quant=False)
                    new.weight.copy_(torch.from_numpy(L[gg].t))
                    new.weight_scale.fill_(float(L[gg].scale))
                    new.eval()
                    setattr(parent, hf_name, new)
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def render_chat(template, messages, bos_token):
    env = jinja2.Environment()
    return env.from_string(template).render(messages=messages, bos_token=bos_token,
                                            add_generation_prompt=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.join(HERE, "tern-tiny.gguf"))
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "tokenizer.json"))
    ap.add_argument("--ckpt", default=os.path.join(HERE, "tern-tiny.pt"))
    ap.add_argument("--out", default=os.path.join(HERE, "golden.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    from reference import Reference, field
    ref = Reference(args.gguf)
    tok = Tokenizer.from_file(args.tokenizer)
    template = field(ref.reader, "tokenizer.chat_template")
    bos_token = ref.tokens[ref.bos]
    hf = build_hf(ref)

    torch_model = None
    if os.path.exists(args.ckpt):
        from model import Config, TernTiny
        ck = torch.load(args.ckpt, map_location="cpu")
        torch_model = TernTiny(Config(**ck["config"]))
        torch_model.load_state_dict(ck["model"])
        torch_model.eval()

    out = {
        "model": os.path.basename(args.gguf),
        "gguf_sha256": hashlib.sha256(open(args.gguf, "rb").read()).hexdigest(),
        "reference": "transformers BitNetForCausalLM (transformers %s, AutoBitLinear offline, eager attention, float32), "
                     "weights loaded from the GGUF; cross-checked with reference.py (numpy)" % __import__("transformers").__version__,
        "activation_rounding": "round-half-to-even",
        "notes": "ids start with BOS; last_logits are the full vocab logits at the last position; "
                 "argmax is the argmax at every position. Independent float32 implementations differ by "
                 "~1e-2..1e-1 in logits because a different summation order can move an activation across "
                 "a rounding boundary (one int8 code off by 1); compare with a tolerance (e.g. max abs "
                 "diff <= 0.15) and allow argmax differences only where the top two logits are within "
                 "that tolerance. The torch-training-model diff also includes the f16 rounding of the "
                 "embedding and ternary scales done by the export.",
        "prompts": [],
    }
    worst = {"hf_vs_numpy": 0.0, "hf_vs_torch": 0.0}
    for p in PROMPTS:
        if p["kind"] == "chat":
            text = render_chat(template, p["messages"], bos_token)
            ids = tok.encode(text, add_special_tokens=False).ids
            assert ids[0] == ref.bos and ids.count(ref.bos) == 1
        else:
            text = p["text"]
            ids = [ref.bos] + tok.encode(text, add_special_tokens=False).ids
        with torch.no_grad():
            lh = hf(torch.tensor([ids])).logits[0].float().numpy()
        ln = ref.forward(ids)
        d_np = float(np.abs(lh - ln).max())
        worst["hf_vs_numpy"] = max(worst["hf_vs_numpy"], d_np)
        rec = {"name": p["name"], "kind": p["kind"]}
        if p["kind"] == "chat":
            rec["messages"] = p["messages"]
            rec["add_generation_prompt"] = True
        rec.update({
            "text": text,
            "ids": ids,
            "argmax": lh.argmax(-1).tolist(),
            "last_logits": [float(np.float32(v)) for v in lh[-1]],
            "max_abs_diff_numpy_reference": d_np,
            "argmax_agrees_numpy_reference": bool((lh.argmax(-1) == ln.argmax(-1)).all()),
        })
        if torch_model is not None:
            with torch.no_grad():
                lt = torch_model(torch.tensor([ids]))[0].numpy()
            d_t = float(np.abs(lh - lt).max())
            worst["hf_vs_torch"] = max(worst["hf_vs_torch"], d_t)
            rec["max_abs_diff_torch_training_model"] = d_t
        out["prompts"].append(rec)
        print(f"{p['name']}: {len(ids)} tokens, next={tok.id_to_token(int(lh[-1].argmax()))!r} "
              f"|hf-numpy|={d_np:.2e} |hf-torch|={rec.get('max_abs_diff_torch_training_model', float('nan')):.2e}")
    out["max_abs_diff"] = worst
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("wrote", args.out, worst)


if __name__ == "__main__":
    main()
