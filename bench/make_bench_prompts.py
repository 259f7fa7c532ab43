"""Held-out ShareGPT prompts for `medusa-infer --bench`: the first user turn of conversations that
medusa-data puts in the validation split (same id hash as data/main_data.c's in_val_split), so heads
trained on the training split never saw them.

usage: python bench/make_bench_prompts.py SHAREGPT.json OUT.json [--n 24] [--val-fraction 0.02]
"""
import argparse
import json
import re

M64 = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def in_val_split(conv_id: str, val_fraction: float) -> bool:
    # "<id>_<part>" parts of one conversation share a split
    m = re.match(r"^(.+)_\d+$", conv_id)
    key = m.group(1) if m else conv_id
    h = fnv1a64(key.encode())
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & M64
    h ^= h >> 33
    return (h >> 11) * 2.0**-53 < val_fraction


def conversations(path):
    """The elements of a JSON list one by one; a truncated file yields its complete elements."""
    text = open(path, encoding="utf-8").read()
    dec = json.JSONDecoder()
    i = text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            return
        yield obj


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sharegpt")
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--val-fraction", type=float, default=0.02)
    ap.add_argument("--min-chars", type=int, default=20)
    ap.add_argument("--max-chars", type=int, default=600)
    args = ap.parse_args()
    prompts = []
    for conv in conversations(args.sharegpt):
        if len(prompts) >= args.n:
            break
        if not conv.get("id") or not in_val_split(conv["id"], args.val_fraction):
            continue
        turns = conv.get("conversations") or []
        if not turns or turns[0].get("from") != "human":
            continue
        text = turns[0].get("value", "").strip()
        # short-to-medium English-looking questions: the bench measures decoding, not prefill
        if args.min_chars <= len(text) <= args.max_chars and text.isascii():
            prompts.append(text)
    json.dump(prompts, open(args.out, "w"), indent=1)
    print(f"{len(prompts)} held-out prompts -> {args.out}")


if __name__ == "__main__":
    main()
