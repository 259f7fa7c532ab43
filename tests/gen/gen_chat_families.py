"""Chat-template fixtures for the Gemma 3, Phi-3, Qwen3 and Llama 3.1 families (tests/test_data.c), in the layout of
gen_chat.py's, on the same conversations (tests/fixtures/chat/conversations.json, written by gen_chat.py).

  .venv/bin/python tests/gen/gen_chat_families.py     (transformers, tokenizers; no network; gemma needs
                                                       cache/models/gemma-3-270m-q4_k_m.gguf)

The Jinja templates are the models' own, copied into tests/gen/templates/ (no download here):
  gemma-3.jinja    google/gemma-3-*-it (as ggml-org/gemma-3-1b-it-GGUF carries it); Gemma 3 270M (base) has none
  phi-3.jinja      microsoft/Phi-3.5-mini-instruct (also Phi-3-mini-4k-instruct's since its 2024-07 update)
  qwen3.jinja      Qwen/Qwen3-* (the 2025-04 release)
  llama-3.1.jinja  meta-llama/Llama-3.1-8B-Instruct (3.3 has the same)
Each is rendered by transformers' apply_chat_template(tokenize=False) and tokenised with add_special_tokens=False.
Tokenizers: gemma the Gemma 3 GGUF's (transformers' conversion); qwen3 SmolLM2's (it has <|im_start|>/<|im_end|>);
llama-3.1 the small Llama-3-style one; phi-3 the small Llama-2-style one (Phi-3's is Llama-2's vocabulary plus
<|user|>..., which it reads here as text).

Loss mask: the text the template writes for each assistant message plus its end-of-turn marker is trained: for
qwen3 the last reply's empty thinking block (<think>\\n\\n</think>\\n\\n, which the template writes and the model
writes itself when thinking is off) is part of it. "generation": for the first conversations, the ids of
apply_chat_template(turns up to each user turn, add_generation_prompt=True) (Qwen3: enable_thinking left
undefined, the template's default: the prompt ends with "<|im_start|>assistant\\n").
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_chat import MAX_LEN, fnv1a64, normalise  # noqa: E402

from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "chat")
TEMPLATES = os.path.join(ROOT, "tests", "gen", "templates")
N_GENERATION = 8

# name, jinja file, tokenizer path, end-of-turn marker, content as the template writes an assistant message
FAMILIES = [
    ("gemma", "gemma-3.jinja", "cache/models/gemma-3-270m-q4_k_m.gguf", "<end_of_turn>", lambda m, last: m.strip()),
    ("phi-3", "phi-3.jinja", "tests/fixtures/chat/spm_tokenizer.json", "<|end|>", lambda m, last: m),
    ("qwen3", "qwen3.jinja", "tests/fixtures/tokenizer/smollm2/tokenizer.json", "<|im_end|>",
     lambda m, last: "<think>\n\n</think>\n\n" + m.lstrip("\n") if last else m),
    ("llama-3.1", "llama-3.1.jinja", "tests/fixtures/chat/llama3_tokenizer.json", "<|eot_id|>",
     lambda m, last: m.strip()),
]
# the fixture tokenizers' own BOS/EOS (a token they lack would be added by transformers; Phi-3's EOS is
# <|endoftext|>, which its template writes after the last turn, here </s>)
BOS_EOS = {"phi-3": ("<s>", "</s>"), "llama-3.1": ("<|begin_of_text|>", "<|eot_id|>"),
           "qwen3": ("<|im_end|>", "<|im_end|>")}


def load_tokenizer(name, path):
    if path.endswith(".gguf"):
        return AutoTokenizer.from_pretrained(os.path.dirname(os.path.join(ROOT, path)),
                                             gguf_file=os.path.basename(path))
    bos, eos = BOS_EOS[name]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(os.path.join(ROOT, path)), bos_token=bos,
                                   eos_token=eos)


def main():
    convs = json.load(open(os.path.join(OUT, "conversations.json"), encoding="utf-8"))
    msgs_all = [normalise(c) for c in convs]
    for name, jinja_file, tok_path, eot, content_of in FAMILIES:
        jinja = open(os.path.join(TEMPLATES, jinja_file), encoding="utf-8").read()
        tok = load_tokenizer(name, tok_path)
        if any("</think>" in m["content"] for msgs in msgs_all for m in msgs):
            sys.exit("a conversation holds </think>: qwen3's content_of does not cover it")

        def render(msgs, gen=False):
            return tok.apply_chat_template(msgs, chat_template=jinja, tokenize=False, add_generation_prompt=gen)

        cases, generation, total, trained = [], [], 0, 0
        for ci, (c, msgs) in enumerate(zip(convs, msgs_all)):
            prompt = render(msgs)
            ranges = []
            for k, m in enumerate(msgs):
                if m["role"] != "assistant":
                    continue
                head = render(msgs[:k], gen=True)
                assert prompt.startswith(head), (name, "generation prompt is not a prefix")
                body = content_of(m["content"], k == len(msgs) - 1) + eot
                assert prompt[len(head):len(head) + len(body)] == body, (name, prompt[len(head):len(head) + 80])
                ranges.append((len(head), len(head) + len(body)))
                if ci < N_GENERATION:
                    generation.append({"conversation": ci, "turns": k,
                                       "ids": tok(head, add_special_tokens=False)["input_ids"]})
            enc = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            mask = [int(any(a < e and b > s for s, e in ranges)) for a, b in offsets]
            ids, mask = ids[:MAX_LEN], mask[:MAX_LEN]
            total += len(ids)
            trained += sum(mask)
            cases.append({"id": c.get("id", ""), "text_fnv1a64": fnv1a64(prompt.encode("utf-8")),
                          "text_bytes": len(prompt.encode("utf-8")), "ids": ids, "mask": "".join(map(str, mask))})
        out = {"template": name, "tokenizer": tok_path, "bos": tok.bos_token, "eos": tok.eos_token, "jinja": jinja,
               "jinja_source": jinja_file, "max_len": MAX_LEN, "cases": cases, "generation": generation}
        path = os.path.join(OUT, f"{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        print(f"{name:9s} {len(cases)} conversations, {total} tokens, {trained} trained, {len(generation)} generation "
              f"prompts; {os.path.getsize(path) / 1e3:.0f} kB")
        if "--print" in sys.argv:
            print(render(msgs_all[-8][:3], gen=True) + "|\n" + render(msgs_all[-8]))


if __name__ == "__main__":
    main()
