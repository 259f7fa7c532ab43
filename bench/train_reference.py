"""PyTorch reference for medusa-train: the same Medusa heads, loss, optimizer and schedule as the reference
Medusa trainer (medusa-llm: medusa/model/medusa_model.py + HF Trainer), trained on the exact packed batches,
in the same order, that bin/medusa-train draws from a token cache. Writes the heads in the Medusa v1 layout
(config.json + medusa_lm_head.safetensors) so bin/medusa-eval scores both runs with the same code.

    .venv/bin/python bench/train_reference.py --model cache/models/X.gguf --data sg.train.tokens.h5 \
        --out runs/ref --heads 5 --batch-tokens 1024 --max-steps 30 --lr 2e-3 --seed 42
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "gen"))
from reference import head_targets, make_heads, read_token_cache  # noqa: E402

M64 = (1 << 64) - 1


class Rng:
    """common/rng.h: xoshiro256** seeded by splitmix64."""

    def __init__(self, seed):
        self.s = []
        x = seed & M64
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & M64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            self.s.append(z ^ (z >> 31))

    def next(self):
        s = self.s
        x = (s[1] * 5) & M64
        result = ((((x << 7) | (x >> 57)) & M64) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = ((s[3] << 45) | (s[3] >> 19)) & M64
        return result

    def below(self, n):
        return self.next() % n if n else 0


class Batcher:
    """data/batcher.c: per-epoch Fisher-Yates order seeded by (seed, epoch), whole conversations packed up to
    batch_tokens (a longer one is cut to it)."""

    def __init__(self, tokens, loss_mask, offsets, batch_tokens, seed):
        self.tokens, self.loss_mask, self.offsets = tokens, loss_mask, offsets
        self.n = len(offsets) - 1
        self.batch_tokens, self.seed = batch_tokens, seed
        self.epoch, self.position = 0, 0
        self.order = self.epoch_order(0)

    def epoch_order(self, epoch):
        order = list(range(self.n))
        rng = Rng(self.seed ^ ((0x9E3779B97F4A7C15 * (epoch + 1)) & M64))
        for i in range(self.n - 1, 0, -1):
            j = rng.below(i + 1)
            order[i], order[j] = order[j], order[i]
        return order

    def conv_len(self, conv):
        return min(int(self.offsets[conv + 1] - self.offsets[conv]), self.batch_tokens)

    def next(self):
        if self.position >= self.n:
            self.epoch, self.position = self.epoch + 1, 0
            self.order = self.epoch_order(self.epoch)
        seqs, used = [], 0
        while self.position < self.n:
            conv = self.order[self.position]
            length = self.conv_len(conv)
            if seqs and used + length > self.batch_tokens:
                break
            at = int(self.offsets[conv])
            seqs.append((self.tokens[at:at + length], self.loss_mask[at:at + length]))
            used += length
            self.position += 1
        return seqs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="base model .gguf file")
    ap.add_argument("--data", required=True, help="training token cache (*.tokens.h5)")
    ap.add_argument("--out", required=True, help="run directory (metrics.jsonl, medusa/)")
    ap.add_argument("--heads", type=int, default=5)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--head-decay", type=float, default=0.8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--max-steps", type=int, required=True)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--print-batches", type=int, default=0, help="print the first N batches' token sums and exit")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    tokens, loss_mask, offsets = read_token_cache(a.data)
    batcher = Batcher(tokens, loss_mask, offsets, a.batch_tokens, a.seed)
    if a.print_batches:
        for i in range(a.print_batches):
            seqs = batcher.next()
            print(i, sum(len(t) for t, _ in seqs), len(seqs), sum(int(t.astype(np.int64).sum()) for t, _ in seqs),
                  sum(int(m.sum()) for _, m in seqs))
        return

    torch.manual_seed(a.seed)
    base = AutoModelForCausalLM.from_pretrained(os.path.dirname(a.model) or ".", gguf_file=os.path.basename(a.model),
                                                torch_dtype=torch.float32)
    base.eval().requires_grad_(False)
    hidden, vocab = base.config.hidden_size, base.config.vocab_size
    heads = make_heads(base.get_output_embeddings().weight.data, a.heads, a.layers, shared_blocks=True)
    params = [p for p in heads.parameters()]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(a.warmup_ratio * a.max_steps), a.max_steps)

    os.makedirs(a.out, exist_ok=True)
    log = open(os.path.join(a.out, "metrics.jsonl"), "w")
    t_start = time.time()
    for step in range(1, a.max_steps + 1):
        t0 = time.time()
        seqs = batcher.next()
        with torch.no_grad():  # packed sequences never attend across each other: one forward per sequence
            hs = torch.cat([base.model(torch.from_numpy(t.astype(np.int64))[None]).last_hidden_state[0]
                            for t, _ in seqs])
        targets = head_targets(seqs, a.heads)
        loss = torch.zeros(())
        rec = {"split": "train", "step": step, "lr": sched.get_last_lr()[0]}
        for h in range(a.heads):
            valid = targets[h] >= 0
            n = int(valid.sum())
            if n == 0:  # as medusa-train: nothing to learn (a mean over nothing would be NaN)
                continue
            logits = heads[h](hs[valid])
            tgt = targets[h][valid]
            loss_h = nn.functional.cross_entropy(logits, tgt)
            loss = loss + a.head_decay ** h * loss_h
            rank = (logits > logits.gather(1, tgt[:, None])).sum(1)
            rec[f"medusa{h}_loss"] = loss_h.item()
            rec[f"medusa{h}_top1"] = (rank == 0).float().mean().item()
        for p in params:  # zeros, not None: a batch without targets is still an AdamW step, as in medusa-train
            p.grad = torch.zeros_like(p)
        if loss.requires_grad:
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm)
        opt.step()
        sched.step()
        rec.update(loss=loss.item(), grad_norm=norm.item(), tokens=sum(len(t) for t, _ in seqs),
                   step_s=time.time() - t0)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(f"step {step}/{a.max_steps} loss {rec['loss']:.4f} grad_norm {rec['grad_norm']:.3f} "
              f"{rec['step_s']:.1f}s", file=sys.stderr, flush=True)

    out = os.path.join(a.out, "medusa")
    os.makedirs(out, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in heads.state_dict().items()}
    save_file(state, os.path.join(out, "medusa_lm_head.safetensors"))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"medusa_num_heads": a.heads, "medusa_num_layers": a.layers, "base_model_name_or_path": a.model,
                   "hidden_size": hidden, "vocab_size": vocab}, f, indent=2)
    print(f"trained {a.max_steps} steps in {time.time() - t_start:.0f} s; heads in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
