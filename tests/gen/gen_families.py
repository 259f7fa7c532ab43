#!/usr/bin/env python3
"""Golden fixtures for the architecture variants beyond plain Llama (run by hand from the repository root, never
in CI):

    .venv/bin/python tests/gen/gen_families.py

It writes, under tests/fixtures/models/:
  * tiny_mistral_sw: a tiny random Mistral whose sliding_window (4) is shorter than the packed batch's sequences,
    with the reference of the packed batch (hidden states after the final norm, logits) from transformers, and a
    greedy continuation of 24 tokens (prompt of 6: the window slides during decoding), so that both the packed
    forward pass and cached decoding are checked against transformers' sliding-window attention.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import MistralConfig, MistralForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_models import OUT, SEQ_LENS, make_tiny, maxdiff, packed_tokens, run_packed, save_hf, save_ref  # noqa: E402

WINDOW = 4
PROMPT_LEN, NEW_TOKENS = 6, 24


def greedy(model, prompt, n_new):
    ids = torch.tensor([prompt], dtype=torch.int64)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def gen_mistral_sw():
    name = "tiny_mistral_sw"
    config = MistralConfig(vocab_size=352, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                           rope_theta=10000.0, rms_norm_eps=1e-5, sliding_window=WINDOW, tie_word_embeddings=False,
                           bos_token_id=1, eos_token_id=2)
    model = make_tiny(name, MistralForCausalLM, config, seed=7)
    out = OUT / name
    save_hf(model, out)
    tokens = packed_tokens(config.vocab_size, SEQ_LENS, seed=17)
    hidden, logits = run_packed(model, tokens, SEQ_LENS)
    # the window must change the result, or the fixture would not test it
    full = make_tiny(name, MistralForCausalLM, MistralConfig(**{**config.to_dict(), "sliding_window": None}), seed=7)
    full.load_state_dict(model.state_dict())
    _, logits_full = run_packed(full, tokens, SEQ_LENS)
    assert maxdiff(logits, logits_full) > 1e-2, "the sliding window changes nothing on this batch"
    save_ref(out / "ref.safetensors", tokens, SEQ_LENS, hidden, logits, {"model": name, "sliding_window": WINDOW})

    prompt = packed_tokens(config.vocab_size, [PROMPT_LEN], seed=23).tolist()
    new = greedy(model, prompt, NEW_TOKENS)
    assert new != greedy(full, prompt, NEW_TOKENS), "the sliding window changes nothing in decoding"
    save_file({"prompt": np.asarray(prompt, np.int32), "greedy": np.asarray(new, np.int32)},
              str(out / "greedy.safetensors"), metadata={"model": name, "sliding_window": str(WINDOW)})
    print(f"{name}: window {WINDOW}, packed logits differ from full attention by {maxdiff(logits, logits_full):.3f}; "
          f"greedy {new}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    gen_mistral_sw()
