#!/usr/bin/env python3
"""Golden fixtures for the architecture variants beyond plain Llama (run by hand from the repository root, never
in CI):

    .venv/bin/python tests/gen/gen_families.py

It writes, under tests/fixtures/models/:
  * tiny_llama3_rope and tiny_linear_rope: tiny random Llamas with llama3 rope scaling (factor 8, the wavelength band
    of an original context of 64 positions, which splits head_dim 16's frequencies into kept, blended and scaled) and
    linear rope scaling (factor 2, its config.json in transformers 4.x's layout: rope_theta + rope_scaling), with the
    packed batch's reference from transformers;
  * tiny_qwen3: a tiny random Qwen3 (per-head q/k RMSNorm before the rotation, head_dim 32 != hidden / heads, no
    q/k/v bias, tied embeddings) with the packed batch's reference;
  * tiny_phi3: a tiny random Phi-3 (fused qkv_proj and gate_up_proj, a sliding window of 6) with the packed batch's
    reference;
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
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Phi3Config,
                          Phi3ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_models import (OUT, SEQ_LENS, make_tiny, maxdiff, packed_tokens, run_packed, save_hf,  # noqa: E402
                        save_ref)

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


def gen_rope_scaled(name, rope, legacy, seed):
    common = dict(vocab_size=288, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = make_tiny(name, LlamaForCausalLM, LlamaConfig(rope_parameters={"rope_theta": 10000.0, **rope}, **common),
                      seed=seed)
    plain = make_tiny(name, LlamaForCausalLM, LlamaConfig(rope_theta=10000.0, **common), seed=seed)
    plain.load_state_dict(model.state_dict())
    out = OUT / name
    save_hf(model, out)
    if legacy:  # transformers 4.x's layout: rope_theta at the top, the scaling under rope_scaling
        p = out / "config.json"
        cfg = json.loads(p.read_text())
        params = cfg.pop("rope_parameters")
        cfg["rope_theta"] = params.pop("rope_theta")
        cfg["rope_scaling"] = params
        p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tokens = packed_tokens(common["vocab_size"], SEQ_LENS, seed=seed + 10)
    hidden, logits = run_packed(model, tokens, SEQ_LENS)
    _, logits_plain = run_packed(plain, tokens, SEQ_LENS)
    assert maxdiff(logits, logits_plain) > 1e-2, f"{name}: the scaling changes nothing on this batch"
    save_ref(out / "ref.safetensors", tokens, SEQ_LENS, hidden, logits, {"model": name, "rope": json.dumps(rope)})
    print(f"{name}: logits differ from unscaled rope by {maxdiff(logits, logits_plain):.3f}")


def gen_qwen3():
    name = "tiny_qwen3"
    config = Qwen3Config(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                         rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
                         bos_token_id=1, eos_token_id=2)
    model = make_tiny(name, Qwen3ForCausalLM, config, seed=29)
    out = OUT / name
    save_hf(model, out)
    tokens = packed_tokens(config.vocab_size, SEQ_LENS, seed=31)
    hidden, logits = run_packed(model, tokens, SEQ_LENS)
    save_ref(out / "ref.safetensors", tokens, SEQ_LENS, hidden, logits, {"model": name})
    print(f"{name}: logits std {logits.std():.3f}")


def gen_phi3():
    name = "tiny_phi3"
    common = dict(vocab_size=272, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = make_tiny(name, Phi3ForCausalLM, Phi3Config(sliding_window=6, **common), seed=37)
    full = make_tiny(name, Phi3ForCausalLM, Phi3Config(sliding_window=None, **common), seed=37)
    full.load_state_dict(model.state_dict())
    out = OUT / name
    save_hf(model, out)
    tokens = packed_tokens(common["vocab_size"], SEQ_LENS, seed=41)
    hidden, logits = run_packed(model, tokens, SEQ_LENS)
    _, logits_full = run_packed(full, tokens, SEQ_LENS)
    assert maxdiff(logits, logits_full) > 1e-2, "the sliding window changes nothing on this batch"
    save_ref(out / "ref.safetensors", tokens, SEQ_LENS, hidden, logits, {"model": name})
    print(f"{name}: logits differ from full attention by {maxdiff(logits, logits_full):.3f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    gen_mistral_sw()
    gen_qwen3()
    gen_phi3()
    gen_rope_scaled("tiny_llama3_rope", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                    legacy=False, seed=11)
    gen_rope_scaled("tiny_linear_rope", {"rope_type": "linear", "factor": 2.0}, legacy=True, seed=13)
