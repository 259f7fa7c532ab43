"""Gemma 3 tokenizer golden fixture for tests/test_tokenizer.c: the ids Hugging Face gives the strings of
tests/fixtures/tokenizer/strings.json (made by gen_tokenizer.py) plus Gemma-specific ones (its control and
user-defined tokens in text, whitespace and newline runs, HTML tags), with the tokenizer transformers builds
from cache/models/gemma-3-270m-q4_k_m.gguf (AutoTokenizer.from_pretrained(dir, gguf_file=...): GemmaTokenizer,
merges rebuilt from the pieces' order). The GGUF is not committed; the test skips without it.

  .venv/bin/python tests/gen/gen_gemma_tokenizer.py     (~30 s; transformers, tokenizers, gguf; no network)

Output tests/fixtures/tokenizer/gemma3.json, the layout of gen_tokenizer.py's fixtures with each id list
stored compactly as a string: base64 of the ids as LEB128 varints.
  {"tokenizer", "versions", "extra_hex": [strings appended to strings.json, UTF-8 as hex],
   "ids": [b64 per string, special tokens parsed, none added], "ids_plain": {index: b64} (special-token text
   read as text, for strings holding some), "ids_bos": {index: b64} (BOS added, first strings),
   "decoded": {index: hex} HF decode where it differs from the string, "decoded_skip": {index: hex}}
"""
import base64
import json
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GGUF_DIR = os.path.join(ROOT, "cache", "models")
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "gemma3.json")
SEED = 20251205
N_BOS = 40

SPECIAL = ["<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<mask>", "<unk>", "<unused0>",
           "<unused17>", "<start_of_image>", "<end_of_image>", "<start_of_turn", "end_of_turn>", "<start_of_turn >"]
USER_DEFINED = ["[multimodal]", "<table>", "</td>", "<h1>", "<blockquote>", "<s>", "</s>", "<code>", "<b>", "<i>"]
TEXT = ["user\nWhat is 2+2?", "model\nIt is 4.", "Hello", " spaced", "日本語", "def f():\n    return 1",
        "😀", "", "\n", "  indented", "a\tb"]


def extra_strings():
    rng = random.Random(SEED)
    out = [
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n",
        "<bos><start_of_turn>user\nYou are helpful.\n\nWhat is the capital of France?<end_of_turn>\n"
        "<start_of_turn>model\n",
        "<table><tr><td>1</td><td>2</td></tr></table>", "<h1>Title</h1>\n<p>para</p>",
        "[multimodal] image here", "<start_of_image><end_of_image>", "<start_of_turn>", "<end_of_turn>",
        "\u2581literal\u2581marks\u2581", "x\u2581\u2581y",
    ]
    out += [" " * k for k in range(1, 40)] + ["\n" * k for k in range(1, 40)]
    out += ["a" + " " * k + "b" for k in range(1, 35)] + ["\t" * k + "x" for k in range(1, 6)]
    out += [" " * k + "word" + "\n" * j for k in range(0, 6) for j in range(0, 4)]
    out += ["\n  \n   \n    x", "  \n\n  ", " \t \t ", "line\r\n\r\nnext", "x\n\n\n\n\n\n\n\n\n\n\n\n\ny"]
    for _ in range(160):
        parts = [rng.choice(SPECIAL + USER_DEFINED + TEXT) for _ in range(rng.randint(2, 6))]
        out.append("".join(parts))
    return out


def b64(ids):
    buf = bytearray()
    for v in ids:
        while True:
            b = v & 0x7F
            v >>= 7
            buf.append(b | (0x80 if v else 0))
            if not v:
                break
    return base64.b64encode(bytes(buf)).decode()


def encoded_fixture(tok, strings):
    """A tokenizers.Tokenizer's ids for the strings (special-token text parsed), and where they say something more:
    the ids with special-token text read as text (ids_plain), with BOS added (ids_bos, the first N_BOS strings), and
    the decodes that differ from the string (decoded, decoded_skip: with special tokens skipped). Returns (ids, dict
    of those fields, base64 varints as the C test reads them)."""
    specials = [t.content for t in tok.get_added_tokens_decoder().values() if t.special]

    def encode(s, parse_special, add_special=False):
        tok.encode_special_tokens = not parse_special
        return tok.encode(s, add_special_tokens=add_special).ids

    ids = [encode(s, True) for s in strings]
    plain, bos, decoded, decoded_skip = {}, {}, {}, {}
    for i, s in enumerate(strings):
        if any(t in s for t in specials):
            plain[i] = b64(encode(s, False))
        if i < N_BOS:
            bos[i] = b64(encode(s, True, True))
        d = tok.decode(ids[i], skip_special_tokens=False)
        if d != s:
            decoded[i] = d.encode("utf-8").hex()
        ds = tok.decode(ids[i], skip_special_tokens=True)
        if ds != d:
            decoded_skip[i] = ds.encode("utf-8").hex()
    return ids, {"ids": [b64(x) for x in ids], "ids_plain": plain, "ids_bos": bos, "decoded": decoded,
                 "decoded_skip": decoded_skip}


def main():
    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    strings = [bytes.fromhex(h).decode("utf-8") for h in
               json.load(open(os.path.join(ROOT, "tests", "fixtures", "tokenizer", "strings.json")))["hex"]]
    extra = extra_strings()
    strings += extra
    hf = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME)
    ids, fields = encoded_fixture(hf.backend_tokenizer, strings)
    # transformers' own encode (what apply_chat_template feeds) must agree with the backend's
    assert all(hf.encode(s, add_special_tokens=False) == x for s, x in zip(strings[:200], ids))
    out = {"tokenizer": "cache/models/" + GGUF_NAME,
           "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
           "extra_hex": [s.encode("utf-8").hex() for s in extra], **fields}
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"gemma3: {len(strings)} strings ({len(extra)} Gemma-specific), {sum(map(len, ids))} tokens, "
          f"{len(fields['ids_plain'])} with special-token text, {len(fields['decoded'])} decode != string; "
          f"{os.path.getsize(OUT) / 1e3:.0f} kB")


if __name__ == "__main__":
    sys.exit(main())
