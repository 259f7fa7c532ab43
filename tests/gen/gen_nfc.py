"""NFC normalisation fixture for tests/test_tokenizer.c: a small Qwen2-style tokenizer.json (NFC normalizer,
Qwen2's split regex, byte-level BPE, <|endoftext|> <|im_start|> <|im_end|>) and the ids Hugging Face `tokenizers`
gives with it, on the strings of strings.json (made by gen_tokenizer.py) plus strings with combining sequences.

The tokenizer is trained here on NFC text (so composed characters have merges and decomposed input tokenizes
differently unless normalised), then given three non-special added tokens: "<tool_call>" (as Qwen2.5 has),
"A" + U+030A with normalized=false (found in the raw text only, as written) and "cafe" + U+0301 with
normalized=true (found after normalisation, as its NFC form: tokenizers normalises the content too).

  .venv/bin/python tests/gen/gen_nfc.py     (under 1 s; tokenizers; no network)

Outputs (tests/fixtures/tokenizer/):
  nfc_tokenizer.json  the tokenizer
  nfc.json  gen_gemma_tokenizer.py's layout ({"tokenizer", "versions", "extra_hex", "ids", "ids_plain", "ids_bos",
            "decoded", "decoded_skip"}, id lists as base64 LEB128) over strings.json + extra_hex, plus
            "nfc_hex": [normalizers.NFC().normalize_str(s) per extra string, UTF-8 as hex], and
            "variants": gen_tokenizer.py's variants.json layout ({"name", "base", "override", "ids", "decoded"}),
            on the extra strings: NFC before or after a Replace in one Sequence, and NFC ahead of the Llama-2
            normaliser
"""
import json
import os
import random
import sys
import unicodedata

import tokenizers
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_gemma_tokenizer import encoded_fixture  # noqa: E402
from gen_tokenizer import UNICODE, variant_fixture  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
TOKENIZER = "tests/fixtures/tokenizer/nfc_tokenizer.json"
SEED = 20251206
VOCAB = 1000

# Qwen2 / Qwen2.5 / Qwen3's pre-tokenizer split
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Each written as it is meant: decomposed where a combining sequence is the point.
COMBINING = [
    "e\u0301", "Cafe\u0301 au lait", "re\u0301sume\u0301 of a nai\u0308ve fiance\u0301e",
    "\u1100\u1161\u11a8", "\u1112\u1161\u11ab\u1100\u1173\u11af \u110b\u1165 (Hangul jamo)", "\u1100\u1161",
    "\uac00\u11a8 (precomposed LV + trailing T)", "\u1100 \u1161 \u11a8 (jamo apart)",
    "A\u030angstro\u0308m", "\u212b (Angstrom sign) \u2126 (Ohm sign)", "\u00c5 already composed",
    "Tie\u0302\u0301ng Vie\u0323\u0302t", "Tie\u0301\u0302ng (marks in another order)", "Vie\u0302\u0323t (dot below last)",
    "ngu\u031b\u0300\u01a1i", "Ng\u01b0\u1eddi Vi\u1ec7t (already NFC)", "o\u031b\u0303 u\u031b\u0309 a\u0306\u0301",
    "Caf\u00e9 na\u00efve Tie\u0301ng (NFC)", "plain ASCII text, nothing to do",
    "\u4e2d\u6587\u6587\u672c\uff1a\u4f60\u597d", "\uf900\uf901 (CJK compatibility ideographs)", "\u65e5\u672c\u8a9e",
    "\U0001f469\u200d\U0001f4bb \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 "
    "\U0001f3f3\ufe0f\u200d\U0001f308 \U0001f44d\U0001f3fd",
    "\u0301abc (combining mark first)", "a\u0301\u0301 two acutes", "o\u0308\u0304 q\u0307\u0323 q\u0323\u0307",
    "\u0958\u0959 (composition exclusions) \u0344 \u0340", "\u03b1\u0313\u0301 \u03c9\u0345\u0342",
    "\u00e9\u0301 composed then combining", "s\u0323\u0307 \u1e69", "\u0041\u030a\u0301 \u01fa",
    "x\u200d\u0301 ZWJ then mark", "\u05d1\u05bc\u05b8 Hebrew points", "\u0915\u093c \u0928\u093c",
]
ADDED_TEXT = [
    "<|im_start|>user\nCafe\u0301 et the\u0301<|im_end|>\n", "<|im_start|>\u0301", "e<|endoftext|>\u0301",
    "<tool_call>A\u030a</tool_call>", "A\u030a and \u00c5 and A\u030a\u0301", "cafe\u0301 and caf\u00e9 and cafe\u0301s",
    "the cafe\u0301<|im_end|>caf\u00e9", "Cafe\u0301 (capital C)",
]
MARKS = ["\u0300", "\u0301", "\u0302", "\u0303", "\u0308", "\u030a", "\u0323", "\u0327", "\u031b", "\u0345"]
BASES = "aeiouAEOUcnsyz\u03b1\u03c9"
TEXT = ["hello", " world", "\n", "caf", "Vi", "\uac00", "\u4e2d", "\U0001f600", "  ", "123"]


def extra_strings():
    rng = random.Random(SEED)
    out = COMBINING + ADDED_TEXT + [unicodedata.normalize("NFD", s) for s in UNICODE]
    for _ in range(60):  # bases with marks in any order, jamo runs, special tokens and plain text
        parts = []
        for _ in range(rng.randint(2, 8)):
            r = rng.random()
            if r < 0.4:
                parts.append(rng.choice(BASES) + "".join(rng.choice(MARKS) for _ in range(rng.randint(1, 3))))
            elif r < 0.6:
                parts.append(chr(0x1100 + rng.randrange(19)) + chr(0x1161 + rng.randrange(21)) +
                             (chr(0x11a8 + rng.randrange(27)) if rng.random() < 0.5 else ""))
            elif r < 0.7:
                parts.append(rng.choice(SPECIAL + ["<tool_call>"]))
            else:
                parts.append(rng.choice(TEXT))
        out.append("".join(parts))
    return out


def build_tokenizer(corpus):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens([AddedToken("<tool_call>", normalized=False), AddedToken("</tool_call>", normalized=False),
                    AddedToken("A\u030a", normalized=False), AddedToken("cafe\u0301", normalized=True)])
    return tok


def variants():
    nfc = {"type": "NFC"}
    spm = json.load(open(os.path.join(ROOT, "tests/fixtures/chat/spm_tokenizer.json"), encoding="utf-8"))
    return [
        ("NFC then Replace \u00e9 -> E", TOKENIZER,
         {"normalizer": {"type": "Sequence", "normalizers": [
             nfc, {"type": "Replace", "pattern": {"String": "\u00e9"}, "content": "E"}]}}),
        ("Replace \u00e9 -> E then NFC", TOKENIZER,
         {"normalizer": {"type": "Sequence", "normalizers": [
             {"type": "Replace", "pattern": {"String": "\u00e9"}, "content": "E"}, nfc]}}),
        ("Replace U+0301 -> nothing then NFC", TOKENIZER,
         {"normalizer": {"type": "Sequence", "normalizers": [
             {"type": "Replace", "pattern": {"String": "\u0301"}, "content": ""}, nfc]}}),
        ("NFC then the Llama-2 normaliser (byte fallback)", "tests/fixtures/chat/spm_tokenizer.json",
         {"normalizer": {"type": "Sequence", "normalizers": [nfc] + spm["normalizer"]["normalizers"]}}),
    ]


def main():
    strings = [bytes.fromhex(h).decode("utf-8") for h in
               json.load(open(os.path.join(OUT, "strings.json")))["hex"]]
    extra = extra_strings()
    corpus = [unicodedata.normalize("NFC", s) for s in strings + extra] * 3
    tok = build_tokenizer(corpus)
    tok.save(os.path.join(ROOT, TOKENIZER), pretty=False)
    tok = Tokenizer.from_file(os.path.join(ROOT, TOKENIZER))  # the reference reads the file the test reads
    nfc = normalizers.NFC()
    nfc_hex = [nfc.normalize_str(s).encode("utf-8").hex() for s in extra]
    assert all(bytes.fromhex(h).decode() == unicodedata.normalize("NFC", s) for h, s in zip(nfc_hex, extra))
    n_changed = sum(h != s.encode("utf-8").hex() for h, s in zip(nfc_hex, extra))

    all_strings = strings + extra
    ids, fields = encoded_fixture(tok, all_strings)
    # without NFC the decomposed strings would tokenize otherwise: the fixture can tell
    raw = Tokenizer.from_file(os.path.join(ROOT, TOKENIZER))
    raw.normalizer = None
    n_differ = sum(raw.encode(s, add_special_tokens=False).ids != x for s, x in zip(all_strings, ids))
    out = {"tokenizer": TOKENIZER, "versions": {"tokenizers": tokenizers.__version__},
           "extra_hex": [s.encode("utf-8").hex() for s in extra], **fields, "nfc_hex": nfc_hex,
           "variants": variant_fixture(extra, variants())}
    path = os.path.join(OUT, "nfc.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
    print(f"nfc: {len(all_strings)} strings ({len(extra)} NFC-specific, {n_changed} of them changed by NFC), "
          f"{sum(map(len, ids))} tokens, {n_differ} tokenize otherwise without the normalizer, {len(fields['ids_plain'])} with "
          f"special-token text; {len(out['variants'])} variants; {os.path.getsize(path) / 1e3:.0f} kB, "
          f"tokenizer {os.path.getsize(os.path.join(ROOT, TOKENIZER)) / 1e3:.0f} kB")


if __name__ == "__main__":
    sys.exit(main())
