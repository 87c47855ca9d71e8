#!/usr/bin/env python3
"""Train tern-tiny (BitNet b1.58 QAT) on one CPU thread, time-boxed.

The learning-rate schedule is linear warmup then cosine decay to --min-lr-frac
of the peak; cosine progress is max(step / max_steps, elapsed / max_minutes),
so the run anneals fully whichever budget ends first. A checkpoint
(`out/ckpt.pt`) is written atomically after every evaluation, so export can
run from the latest state at any time. Losses (nats/token) go to `out/log.csv`.
"""
import argparse
import csv
import math
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import torch
import torch.nn.functional as F

from model import Config, TernTiny

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=os.path.join(HERE, "data"))
    ap.add_argument("--out-dir", default=os.path.join(HERE, "out"))
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--long-seq-len", type=int, default=512)
    ap.add_argument("--long-every", type=int, default=0,
                    help="if >0, every Nth step uses --long-seq-len sequences (same token count)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training step")
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--emb-lr-mult", type=float, default=1.0)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--max-minutes", type=float, default=95.0)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-tokens", type=int, default=32768)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out_dir, exist_ok=True)

    train = np.fromfile(os.path.join(args.data_dir, "train.bin"), dtype=np.uint16)
    val = np.fromfile(os.path.join(args.data_dir, "val.bin"), dtype=np.uint16)
    print(f"train tokens {len(train)}, val tokens {len(val)}", flush=True)

    cfg = Config()
    model = TernTiny(cfg)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"params {nparams}", flush=True)

    decay, no_decay, emb = [], [], []
    for n, p in model.named_parameters():
        if n == "tok_emb.weight":
            emb.append(p)
        elif p.ndim == 2:
            decay.append(p)
        else:
            no_decay.append(p)
    opt = torch.optim.AdamW([
        {"params": decay, "weight_decay": args.weight_decay, "lr_mult": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
        {"params": emb, "weight_decay": 0.0, "lr_mult": args.emb_lr_mult},
    ], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    # fixed validation windows (non-overlapping, deterministic)
    vl = args.seq_len
    nwin = min(args.eval_tokens // vl, (len(val) - 1) // vl)
    vx = torch.from_numpy(val[: nwin * vl].astype(np.int64)).view(nwin, vl)
    vy = torch.from_numpy(val[1: nwin * vl + 1].astype(np.int64)).view(nwin, vl)

    train_model = torch.compile(model) if args.compile else model

    step, tokens_seen, elapsed_prev = 0, 0, 0.0
    ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
    log_path = os.path.join(args.out_dir, "log.csv")
    if args.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location="cpu")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, tokens_seen, elapsed_prev = ck["step"], ck["tokens_seen"], ck["elapsed"]
        print(f"resumed at step {step}", flush=True)
    else:
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(["step", "tokens", "elapsed_s", "lr", "train_loss", "val_loss", "tok_per_s"])

    @torch.no_grad()
    def evaluate():
        model.eval()
        tot, n = 0.0, 0
        for i in range(0, nwin, 16):
            logits = model(vx[i:i + 16])
            loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), vy[i:i + 16].reshape(-1), reduction="sum")
            tot += loss.item()
            n += vy[i:i + 16].numel()
        model.train()
        return tot / n

    def save(val_loss, elapsed):
        tmp = ckpt_path + ".tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "config": cfg.to_dict(),
                    "step": step, "tokens_seen": tokens_seen, "elapsed": elapsed,
                    "val_loss": val_loss, "args": vars(args)}, tmp)
        os.replace(tmp, ckpt_path)

    max_s = args.max_minutes * 60.0
    t0 = time.time() - elapsed_prev
    last_t, last_tok = time.time(), tokens_seen
    run_loss, run_n = 0.0, 0
    model.train()
    while True:
        elapsed = time.time() - t0
        progress = max(step / args.max_steps, elapsed / max_s)
        if progress >= 1.0:
            break
        if step < args.warmup:
            lr = args.lr * (step + 1) / args.warmup
        else:
            lr = args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]

        L = args.long_seq_len if (args.long_every and step % args.long_every == args.long_every - 1) else args.seq_len
        B = max(1, args.batch_tokens // L)
        starts = rng.integers(0, len(train) - L - 1, size=B)
        xb = torch.from_numpy(np.stack([train[s:s + L] for s in starts]).astype(np.int64))
        yb = torch.from_numpy(np.stack([train[s + 1:s + L + 1] for s in starts]).astype(np.int64))
        logits = train_model(xb)
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), yb.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        step += 1
        tokens_seen += B * L
        run_loss += loss.item()
        run_n += 1

        if step % 10 == 0:
            now = time.time()
            tps = (tokens_seen - last_tok) / (now - last_t)
            last_t, last_tok = now, tokens_seen
            print(f"step {step} tok {tokens_seen} loss {run_loss / run_n:.4f} lr {lr:.2e} "
                  f"{tps:.0f} tok/s elapsed {now - t0:.0f}s", flush=True)
            if step % args.eval_every != 0:
                with open(log_path, "a", newline="") as f:
                    csv.writer(f).writerow([step, tokens_seen, f"{now - t0:.1f}", f"{lr:.3e}",
                                            f"{run_loss / run_n:.4f}", "", f"{tps:.0f}"])
            tr = run_loss / run_n
            run_loss, run_n = 0.0, 0
            if step % args.eval_every == 0:
                vloss = evaluate()
                el = time.time() - t0
                print(f"== step {step} val_loss {vloss:.4f}", flush=True)
                with open(log_path, "a", newline="") as f:
                    csv.writer(f).writerow([step, tokens_seen, f"{el:.1f}", f"{lr:.3e}",
                                            f"{tr:.4f}", f"{vloss:.4f}", f"{tps:.0f}"])
                save(vloss, el)
                last_t = time.time()

    vloss = evaluate()
    el = time.time() - t0
    print(f"== final step {step} tokens {tokens_seen} val_loss {vloss:.4f} elapsed {el:.0f}s", flush=True)
    with open(log_path, "a", newline="") as f:
        csv.writer(f).writerow([step, tokens_seen, f"{el:.1f}", "", "", f"{vloss:.4f}", ""])
    save(vloss, el)


if __name__ == "__main__":
    main()
