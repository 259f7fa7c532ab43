"""medusa-data throughput beside Hugging Face tokenizers (Rust) on the same texts and thread count.

  .venv/bin/python bench/bench_data.py [--threads 2] [--limit N] [--model DIR] [--input SHAREGPT.json]

Both sides use the same tokenizer: SmolLM2-135M-Instruct's tokenizer.json as transformers converts it from
the GGUF (tests/fixtures/tokenizer/smollm2/, with its tokenizer_config.json for the chat template).
medusa-data runs end to end (stream the JSON, render chatml, tokenise, mask, write HDF5) with no
truncation (--max-len 10^9) and no validation split. The baseline renders the same conversations in
Python (the rules of tests/gen/gen_chat.py), then the timed part: tokenizers' encode_batch with offsets
(Rust, RAYON_NUM_THREADS threads) and the loss mask from the offsets (numpy). Conversation, token and
trained-token totals must agree, which checks that both did the same work. Each side runs --repeat times,
alternating, and its fastest run counts; CPU seconds are reported too, as they suffer less than wall time
from other processes on a shared machine. Writes bench/data_cpu_<host>.txt.
"""
import argparse
import os
import resource
import socket
import subprocess
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--model", default="tests/fixtures/tokenizer/smollm2")
p.add_argument("--input", default="cache/data/ShareGPT_V3_unfiltered_cleaned_split.json")
p.add_argument("--limit", type=int, default=0, help="the first N conversations of the file (0: all)")
p.add_argument("--repeat", type=int, default=3, help="runs of each side; the fastest counts (shared machines)")
p.add_argument("--bin", default="bin/medusa-data")
p.add_argument("--out", default=None)
a = p.parse_args()
os.environ["RAYON_NUM_THREADS"] = str(a.threads)  # read when tokenizers starts its thread pool
os.environ["TOKENIZERS_PARALLELISM"] = "true"

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import tokenizers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "gen"))
from gen_chat import load_sharegpt, normalise  # noqa: E402

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
host = socket.gethostname().split(".")[0]
out_path = a.out or os.path.join(ROOT, "bench", f"data_cpu_{host}.txt")
lines = []


def say(s):
    print(s, flush=True)
    lines.append(s)


data = load_sharegpt(a.input)
if a.limit:
    data = data[: a.limit]
lscpu = dict(line.split(":", 1) for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
             if ":" in line)
cpu = (f"{lscpu.get('Model name', '?').strip()} (family {lscpu.get('CPU family', '?').strip()}, model "
       f"{lscpu.get('Model', '?').strip()}, {os.cpu_count()} CPUs"
       f"{', ' + lscpu['Hypervisor vendor'].strip() + ' VM' if 'Hypervisor vendor' in lscpu else ''})")
say(f"# {time.strftime('%Y-%m-%d')} {cpu}, {a.threads} threads, {os.path.basename(a.input)} "
    f"({os.path.getsize(a.input) / 1e6:.0f} MB), {'first ' if a.limit else ''}{len(data)} complete conversations, SmolLM2-135M-Instruct tokenizer, chatml")

def cpu_seconds(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def run_ours():
    cmd = [a.bin, "--model", a.model, "--input", a.input, "--out", prefix, "--max-len", "1000000000",
           "--val-fraction", "0", "--threads", str(a.threads), "--quiet"]
    if a.limit:
        cmd += ["--limit", str(a.limit)]
    c0, t0 = cpu_seconds(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0, cpu_seconds(resource.RUSAGE_CHILDREN) - c0


def run_hf():
    c0, t0 = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
    encs = tok.encode_batch(texts, add_special_tokens=False)
    t_encode, c_encode = time.perf_counter() - t0, cpu_seconds(resource.RUSAGE_SELF) - c0
    t0 = time.perf_counter()
    n = trained = 0
    for e, spans in zip(encs, ranges):
        off = np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2)
        mask = np.zeros(len(off), dtype=bool)
        for s, t in spans:
            mask |= (off[:, 0] < t) & (off[:, 1] > s)
        n += len(off)
        trained += int(mask.sum())
    return t_encode, c_encode, time.perf_counter() - t0, n, trained


# the same texts for Hugging Face tokenizers, rendered in Python (untimed)
os.makedirs(os.path.join(ROOT, "bench", "tmp"), exist_ok=True)
prefix = os.path.join(ROOT, "bench", "tmp", "data")
tok = tokenizers.Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
texts, ranges = [], []
for element in data:
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

ours, theirs = [], []
for _ in range(a.repeat):
    ours.append(run_ours())
    theirs.append(run_hf())
t_ours, c_ours = min(ours)
t_encode, c_encode, t_mask, hf_tokens, hf_trained = min(theirs)
with h5py.File(prefix + ".train.tokens.h5") as f:
    ours_tokens, ours_trained = int(f["tokens"].shape[0]), int(f["loss_mask"][:].sum())
    ours_convs = int(f["conv_offsets"].shape[0]) - 1
say(f"medusa-data end to end: {ours_convs} conversations, {ours_tokens} tokens ({ours_trained} trained) in "
    f"{t_ours:.2f} s ({c_ours:.2f} CPU s), {ours_tokens / t_ours:.0f} tokens/s, {ours_tokens / c_ours:.0f} tokens/CPU-s "
    f"(best of {a.repeat}: {', '.join(f'{t:.2f}' for t, _ in ours)} s)")
say(f"hf tokenizers encode_batch: {len(texts)} conversations, {hf_tokens} tokens ({hf_trained} trained) in "
    f"{t_encode:.2f} s ({c_encode:.2f} CPU s), {hf_tokens / t_encode:.0f} tokens/s, {hf_tokens / c_encode:.0f} "
    f"tokens/CPU-s (tokenizers {tokenizers.__version__}, {a.threads} threads; best of {a.repeat}: "
    f"{', '.join(f'{r[0]:.2f}' for r in theirs)} s); + masks (numpy) {t_mask:.2f} s: "
    f"{hf_tokens / (t_encode + t_mask):.0f} tokens/s")
same = ours_tokens == hf_tokens and ours_trained == hf_trained and ours_convs == len(texts)
say(f"same work: {'yes' if same else 'NO'} (conversations {ours_convs} vs {len(texts)}, tokens {ours_tokens} vs "
    f"{hf_tokens}, trained {ours_trained} vs {hf_trained})")
say(f"ratio medusa-data end to end / hf encode_batch: {ours_tokens / t_ours / (hf_tokens / t_encode):.2f}x wall, "
    f"{c_encode / c_ours:.2f}x CPU; / hf encode_batch + masks: {ours_tokens / t_ours / (hf_tokens / (t_encode + t_mask)):.2f}x wall")
with open(out_path, "w") as fo:
    fo.write("\n".join(lines) + "\n")
print(f"wrote {out_path}")
