"""PyTorch CPU baseline for bench/bench_forward.c: the same GGUF model loaded by transformers (fp32),
the same packed batch (sequences run as one padded batch of equal-length sequences, which is what a
packed batch with equal lengths costs in PyTorch), best of N runs, tokens/s."""
import argparse, os, time

import torch
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--tokens", type=int, default=2048)
p.add_argument("--seq-len", type=int, default=512)
p.add_argument("--reps", type=int, default=3)
p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
a = p.parse_args()
torch.set_num_threads(a.threads)
d, f = os.path.split(os.path.abspath(a.model))
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
g = torch.Generator().manual_seed(1234)
ids = torch.randint(0, model.config.vocab_size, (a.tokens // a.seq_len, a.seq_len), generator=g)
best = 1e30
with torch.inference_mode():
    for _ in range(a.reps):
        t0 = time.perf_counter()
        model(input_ids=ids)
        best = min(best, time.perf_counter() - t0)
print(f"pytorch forward: {a.tokens} tokens ({ids.shape[0]} x {a.seq_len}), best of {a.reps}: {best:.3f} s, "
      f"{a.tokens / best:.1f} tokens/s (torch {torch.__version__}, {a.threads} threads)")
