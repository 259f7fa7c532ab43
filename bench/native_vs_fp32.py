#!/usr/bin/env python3
"""Greedy replies of --precision native against the fp32 path, prompt by prompt: the lossless claim of the quantized
CPU kernels (the same fp32 products as the dequantised model; sums in another order) checked end to end.

    .venv/bin/python bench/native_vs_fp32.py --model M.gguf [--fp32-bin OLD/bin/medusa-infer] [--prompts P.json]

Each prompt of P (a JSON list; default the 24 held-out ShareGPT prompts) is decoded greedily, --max-new-tokens tokens,
by bin/medusa-infer --precision native and by FP32_BIN --precision fp32 (default bin/medusa-infer itself; an older
build gives "today's fp32 path"), and the replies are compared as text. Prints one line per prompt and the count."""
import argparse
import json
import subprocess
import sys


def reply(binary, model, precision, prompt, max_new, threads):
    out = subprocess.run([binary, "--model", model, "--precision", precision, "--prompt", prompt, "--max-new-tokens",
                          str(max_new), "--threads", str(threads), "--quiet"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{binary} failed on a prompt: {out.stderr.strip()[-500:]}")
    return out.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--bin", default="bin/medusa-infer")
    ap.add_argument("--fp32-bin", default="bin/medusa-infer")
    ap.add_argument("--prompts", default="bench/prompts_sharegpt_val.json")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    prompts = json.load(open(a.prompts))
    same = 0
    for i, p in enumerate(prompts):
        text = p if isinstance(p, str) else p.get("prompt", "")
        native = reply(a.bin, a.model, "native", text, a.max_new_tokens, a.threads)
        fp32 = reply(a.fp32_bin, a.model, "fp32", text, a.max_new_tokens, a.threads)
        equal = native == fp32
        same += equal
        common = next((k for k, (x, y) in enumerate(zip(native, fp32)) if x != y), min(len(native), len(fp32)))
        print(f"prompt {i:2d}: {'same' if equal else 'DIFFERENT after %d characters' % common} "
              f"({len(native)} characters)", flush=True)
    print(f"{same}/{len(prompts)} greedy replies identical: native ({a.bin}) vs fp32 ({a.fp32_bin}), "
          f"{a.max_new_tokens} new tokens, {a.model}")
    return 0 if same == len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
