"""PyTorch baseline for bench/bench_train.c: one Medusa training step as the reference Medusa code does it
(ResBlock + lm_head heads, lm_heads copied from the base model, frozen base forward, loss of head i weighted
by decay^i over the positions whose target t+2+i is a trained token of the same conversation, AdamW with
clipping), on the same packed batches as bench_train (conversations in file order, packed greedily up to
--batch-tokens). Each conversation runs through the base model on its own (no padding: the cheapest way in
PyTorch); the heads run on all positions, as the reference computes them. Reports tokens/s after one warm-up
step. --device cpu: fp32. --device cuda: as the reference trainer runs (HF Trainer with --bf16): the frozen base
in bf16, fp32 head parameters and optimizer, forward and loss under bf16 autocast. --pad-to N: as the reference
trainer feeds it, every conversation right-padded to N (its model_max_length, 2048; padding="max_length"), the
base and the heads running on all N positions; tokens/s still counts the conversations' own tokens.
--model: a .gguf file or a Hugging Face directory."""
import argparse, math, os, sys, time

import numpy as np
import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "gen"))
from reference import head_targets, make_heads, read_token_cache  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--data", required=True)
p.add_argument("--heads", type=int, default=5)
p.add_argument("--batch-tokens", type=int, default=2048)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--decay", type=float, default=0.8)
p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
p.add_argument("--pad-to", type=int, default=0, help="pad every conversation to this length, as the reference does")
a = p.parse_args()
torch.set_num_threads(a.threads)
dev = torch.device(a.device)
gpu = a.device == "cuda"


def batches(path, batch_tokens):
    """The same packing as data/batcher.c with shuffling off: whole conversations in file order, cut to
    batch_tokens, packed greedily."""
    tokens, mask, off = read_token_cache(path)
    cur = []
    used = 0
    for c in range(len(off) - 1):
        n = min(int(off[c + 1] - off[c]), batch_tokens)
        if cur and used + n > batch_tokens:
            yield cur
            cur, used = [], 0
        cur.append((tokens[off[c]:off[c] + n].astype(np.int64), mask[off[c]:off[c] + n].astype(bool)))
        used += n
    if cur:
        yield cur


def base_hidden(tok):
    """The frozen base's last hidden state (after the final norm) for one conversation, padded if --pad-to."""
    ids = torch.from_numpy(tok).to(dev)[None]
    if a.pad_to <= len(tok):
        return base.model(input_ids=ids).last_hidden_state[0]
    att = torch.zeros((1, a.pad_to), dtype=torch.long, device=dev)
    att[0, :len(tok)] = 1
    ids = torch.nn.functional.pad(ids, (0, a.pad_to - len(tok)))
    return base.model(input_ids=ids, attention_mask=att).last_hidden_state[0]


def sync():
    if gpu:
        torch.cuda.synchronize()


dtype = torch.bfloat16 if gpu else torch.float32
if os.path.isdir(a.model):
    base = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)
else:
    d, f = os.path.split(os.path.abspath(a.model))
    base = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=dtype)
base = base.to(dev).eval()
for prm in base.parameters():
    prm.requires_grad_(False)
heads = make_heads(base.get_output_embeddings().weight.data, a.heads, 1, shared_blocks=True)
heads.to(dev)
opt = torch.optim.AdamW(heads.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
sched = get_cosine_schedule_with_warmup(opt, math.ceil(0.1 * (a.steps + 1)), a.steps + 1)  # as bench_train
ce = nn.CrossEntropyLoss()

total = 0.0
n_tokens = 0
it = batches(a.data, a.batch_tokens)
for step in range(a.steps + 1):
    seqs = next(it)
    labels = [t.to(dev) for t in head_targets(seqs, a.heads, a.pad_to)]  # -100 on padding too
    sync()
    t0 = time.perf_counter()
    with torch.autocast(a.device, dtype=torch.bfloat16, enabled=gpu):
        with torch.no_grad():  # frozen base, one conversation at a time
            hidden = torch.cat([base_hidden(tok) for tok, _ in seqs])
        loss = 0
        for i, head in enumerate(heads):
            logits = head(hidden)
            loss = loss + a.decay ** i * ce(logits, labels[i])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(heads.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    sync()
    dt = time.perf_counter() - t0
    T = sum(len(t) for t, _ in seqs)
    print(f"step {step}: {T} tokens in {len(seqs)} sequences, {dt:.3f} s, loss {loss.item():.4f}", flush=True)
    if step > 0:
        total += dt
        n_tokens += T
padding = f", padded to {a.pad_to} as the reference trainer" if a.pad_to else ""
print(f"pytorch train{padding}: {a.heads} heads, {n_tokens} tokens in {a.steps} steps, {total:.3f} s, "
      f"{n_tokens / total:.1f} tokens/s (torch {torch.__version__}, "
      f"{torch.cuda.get_device_name() + ', bf16 autocast' if gpu else str(a.threads) + ' threads, fp32'})")
