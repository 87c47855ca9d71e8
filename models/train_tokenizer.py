#!/usr/bin/env python3
"""Train the tern-tiny byte-level BPE tokenizer and encode the corpus.

* vocab 2048 total: 3 special tokens + 256 byte symbols + 1789 merges
* GPT-2 ByteLevel pre-tokenizer (standard GPT-2 regex, add_prefix_space=False)
  and ByteLevel decoder
* special tokens: <|begin_of_text|> (BOS), <|end_of_text|> (EOS), <|eot_id|> (EOT)

Writes `tokenizer.json`, then `data/train.bin` and `data/val.bin` (uint16 token
streams). Every plain-text document is `BOS text EOS`; every chat sample is
`BOS "User: A" EOT "Assistant: B" EOT EOS`, i.e. the chat template rendering
followed by the document separator.
"""
import argparse
import json
import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
VOCAB = 2048


def chat_text_parts(d):
    return [("User: " + d["user"]), ("Assistant: " + d["assistant"])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=os.path.join(HERE, "data", "corpus.jsonl"))
    ap.add_argument("--out", default=os.path.join(HERE, "tokenizer.json"))
    ap.add_argument("--data-dir", default=os.path.join(HERE, "data"))
    args = ap.parse_args()

    docs = [json.loads(l) for l in open(args.corpus, encoding="utf-8")]

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def train_iter():
        for d in docs:
            if d["split"] != "train":
                continue
            if d["kind"] == "text":
                yield d["text"]
            else:
                yield from chat_text_parts(d)

    tok.train_from_iterator(train_iter(), trainer=trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    tok.save(args.out)
    print("saved", args.out, "vocab", tok.get_vocab_size())

    bos, eos, eot = (tok.token_to_id(s) for s in SPECIALS)
    streams = {"train": [], "val": []}
    counts = {"train": {"text": 0, "chat": 0}, "val": {"text": 0, "chat": 0}}
    texts = [(d["split"], d["kind"], [d["text"]] if d["kind"] == "text" else chat_text_parts(d))
             for d in docs]
    flat = [p for _, _, parts in texts for p in parts]
    enc = tok.encode_batch(flat, add_special_tokens=False)
    k = 0
    for split, kind, parts in texts:
        ids = [bos]
        for p in parts:
            ids += enc[k].ids
            k += 1
            if kind == "chat":
                ids.append(eot)
        ids.append(eos)
        streams[split].extend(ids)
        counts[split][kind] += len(ids)
    for split, ids in streams.items():
        arr = np.asarray(ids, dtype=np.uint16)
        path = os.path.join(args.data_dir, f"{split}.bin")
        arr.tofile(path)
        c = counts[split]
        print(f"{split}: {len(arr)} tokens (text {c['text']}, chat {c['chat']}, "
              f"chat share {c['chat'] / max(1, len(arr)):.1%}) -> {path}")
    nchars = sum(len(p) for p in flat)
    print(f"chars/token {nchars / (len(streams['train']) + len(streams['val'])):.2f}")


if __name__ == "__main__":
    main()
