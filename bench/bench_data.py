"""medusa-data throughput beside Hugging Face tokenizers (Rust) on the same texts and thread count.

  .venv/bin/python bench/bench_data.py [--threads 2] [--model GGUF] [--data SHAREGPT.json]

medusa-data runs end to end (stream the JSON, render chatml, tokenise, mask, write HDF5) with no
truncation (--max-len 10^9) and no validation split. The baseline renders the same conversations in
Python (the rules of tests/gen/gen_chat.py), then the timed part: tokenizers' encode_batch with offsets
(Rust, RAYON_NUM_THREADS threads) and the loss mask from the offsets (numpy). Token and trained-token
totals must agree, which checks that both did the same work. Appends nothing: writes
bench/data_<host>.txt.
"""
import argparse
import os
import socket
import subprocess
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--model", default="cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
p.add_argument("--data", default="cache/data/ShareGPT_V3_unfiltered_cleaned_split.json")
p.add_argument("--bin", default="bin/medusa-data")
p.add_argument("--out", default=None)
a = p.parse_args()
os.environ["RAYON_NUM_THREADS"] = str(a.threads)  # read when tokenizers starts its thread pool
os.environ["TOKENIZERS_PARALLELISM"] = "true"

import h5py  # noqa: E402
import numpy as np  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "gen"))
from gen_chat import SMOLLM2_JINJA, load_sharegpt, normalise  # noqa: E402

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
host = socket.gethostname().split(".")[0]
out_path = a.out or os.path.join(ROOT, "bench", f"data_{host}.txt")
lines = []


def say(s):
    print(s, flush=True)
    lines.append(s)


cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
say(f"# {time.strftime('%Y-%m-%d')} {cpu}, {a.threads} threads, {os.path.basename(a.data)} "
    f"({os.path.getsize(a.data) / 1e6:.0f} MB), SmolLM2-135M-Instruct tokenizer, chatml")

# medusa-data, end to end
tmp = os.path.join(ROOT, "bench", "tmp", "data")
env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
t0 = time.perf_counter()
subprocess.run([a.bin, "--model", a.model, "--data", a.data, "--out", tmp, "--max-len", "1000000000",
                "--val-fraction", "0"], check=True, env=env)
t_ours = time.perf_counter() - t0
with h5py.File(os.path.join(tmp, "train.tokens.h5")) as f:
    ours_tokens, ours_trained = int(f["tokens"].shape[0]), int(f["loss_mask"][:].sum())
    ours_convs = int(f["conv_offsets"].shape[0]) - 1
say(f"medusa-data end to end: {ours_convs} conversations, {ours_tokens} tokens ({ours_trained} trained) in "
    f"{t_ours:.2f} s, {ours_tokens / t_ours:.0f} tokens/s")

# Hugging Face tokenizers on the same texts
d, f = os.path.split(os.path.abspath(a.model))
tok = AutoTokenizer.from_pretrained(d, gguf_file=f).backend_tokenizer
t0 = time.perf_counter()
texts, ranges = [], []
for element in load_sharegpt(a.data):
    msgs = normalise(element) if isinstance(element, dict) else None
    if not msgs:
        continue
    text, spans = "" if msgs[0]["role"] == "system" else f"<|im_start|>system\n{SYSTEM}<|im_end|>\n", []
    for m in msgs:
        text += f"<|im_start|>{m['role']}\n"
        if m["role"] == "assistant":
            spans.append((len(text), len(text) + len(m["content"]) + len("<|im_end|>")))
        text += m["content"] + "<|im_end|>\n"
    texts.append(text)
    ranges.append(spans)
t_prep = time.perf_counter() - t0
t0 = time.perf_counter()
encs = tok.encode_batch(texts, add_special_tokens=False)
t_encode = time.perf_counter() - t0
t0 = time.perf_counter()
hf_tokens = hf_trained = 0
for e, spans in zip(encs, ranges):
    off = np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2)
    mask = np.zeros(len(off), dtype=bool)
    for s, t in spans:
        mask |= (off[:, 0] < t) & (off[:, 1] > s)
    hf_tokens += len(off)
    hf_trained += int(mask.sum())
t_mask = time.perf_counter() - t0
say(f"hf tokenizers encode_batch: {len(texts)} conversations, {hf_tokens} tokens ({hf_trained} trained) in "
    f"{t_encode:.2f} s, {hf_tokens / t_encode:.0f} tokens/s (tokenizers {sys.modules['tokenizers'].__version__}, "
    f"{a.threads} threads); + masks {t_mask:.2f} s: {hf_tokens / (t_encode + t_mask):.0f} tokens/s; "
    f"(JSON + rendering in Python, untimed: {t_prep:.2f} s)")
same = ours_tokens == hf_tokens and ours_trained == hf_trained and ours_convs == len(texts)
say(f"same work: {'yes' if same else 'NO'} (tokens {ours_tokens} vs {hf_tokens}, trained {ours_trained} vs {hf_trained})")
say(f"ratio medusa-data end to end / hf encode_batch: {ours_tokens / t_ours / (hf_tokens / t_encode):.2f}x; "
    f"/ hf encode_batch + masks: {ours_tokens / t_ours / (hf_tokens / (t_encode + t_mask)):.2f}x")
with open(out_path, "w") as fo:
    fo.write("\n".join(lines) + "\n")
