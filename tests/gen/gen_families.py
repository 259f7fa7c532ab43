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
  * tiny_gemma3: a tiny random Gemma 3 text model (RMSNorm by 1 + w, embeddings scaled by sqrt(hidden), norms before
    and after each block, q/k norms, GeLU-tanh MLP, head_dim 32 != hidden / heads, tied embeddings; layers windowed,
    global, windowed with a window of 4, the global layer's rope base 1e6 scaled linearly by 2, the windowed ones'
    1e4), with the packed batch's reference and a greedy continuation of 24 tokens;
  * tiny_gemma2: a tiny random Gemma 2 (Gemma's norms, scaled embeddings and GeLU-tanh; no q/k norms; every other
    layer windowed (4), query_pre_attn_scalar 24 != head_dim 32, attention scores soft-capped at 2 and logits at 3,
    low enough to bend most values) with the packed batch's reference and a greedy continuation;
  * tiny_yarn_rope and tiny_yarn_qwen2: yarn rope scaling (factor 4, original context 64) with transformers' defaults,
    and in Qwen2's 4.x layout with every option (beta 16/2, untruncated band, mscale / mscale_all_dim);
  * tiny_phi3_longrope: Phi-3 with longrope factors (4.x "su" layout, original context 32 holding the packed batch),
    and its GGUF as llama.cpp writes it (gguf/tiny_phi3_longrope.F32.gguf);
  * tiny_dynamic_rope: dynamic NTK scaling, which within max_position_embeddings is the default rope;
  * tiny_mistral_sw: a tiny random Mistral whose sliding_window (4) is shorter than the packed batch's sequences,
    with the reference of the packed batch (hidden states after the final norm, logits) from transformers, and a
    greedy continuation of 24 tokens (prompt of 6: the window slides during decoding), so that both the packed
    forward pass and cached decoding are checked against transformers' sliding-window attention.
"""

import json
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import (Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_models import (OUT, SEQ_LENS, load_gguf_fp32, load_hf_fp32, make_tiny, maxdiff, packed_tokens,  # noqa: E402
                        run_packed, save_hf, save_ref, write_gguf)

WINDOW = 4
PROMPT_LEN, NEW_TOKENS = 6, 24


def greedy(model, prompt, n_new):
    ids = torch.tensor([prompt], dtype=torch.int64)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def gen_packed(name, cls, config, config_without, seed, token_seed, what, meta):
    """A tiny random model of `config` saved as tests/fixtures/models/NAME with its packed batch's reference; the same
    weights under `config_without` (the feature off, or None) must give other logits, or the fixture would not test
    the feature. Returns (model, model without the feature)."""
    model = make_tiny(name, cls, config, seed=seed)
    out = OUT / name
    save_hf(model, out)
    tokens = packed_tokens(config.vocab_size, SEQ_LENS, seed=token_seed)
    hidden, logits = run_packed(model, tokens, SEQ_LENS)
    without = None
    if config_without is not None:
        without = make_tiny(name, cls, config_without, seed=seed)
        without.load_state_dict(model.state_dict())
        _, logits_without = run_packed(without, tokens, SEQ_LENS)
        diff = maxdiff(logits, logits_without)
        assert diff > 1e-2, f"{name}: {what} changes nothing on this batch"
        print(f"{name}: logits differ from the model without {what} by {diff:.3f}")
    save_ref(out / "ref.safetensors", tokens, SEQ_LENS, hidden, logits, {"model": name, **meta})
    return model, without


def save_greedy(name, model, without, vocab_size, what):
    """A greedy continuation of NEW_TOKENS after a prompt of PROMPT_LEN (the window slides during decoding); the
    model without the feature must continue otherwise."""
    prompt = packed_tokens(vocab_size, [PROMPT_LEN], seed=23).tolist()
    new = greedy(model, prompt, NEW_TOKENS)
    assert new != greedy(without, prompt, NEW_TOKENS), f"{what} changes nothing in decoding"
    save_file({"prompt": np.asarray(prompt, np.int32), "greedy": np.asarray(new, np.int32)},
              str(OUT / name / "greedy.safetensors"), metadata={"model": name, "sliding_window": str(WINDOW)})
    print(f"{name}: greedy {new}")


def gen_gemma3():
    name = "tiny_gemma3"
    common = dict(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32, max_position_embeddings=256,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0,
                  layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                  rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    model, without = gen_packed(name, Gemma3ForCausalLM, Gemma3TextConfig(sliding_window=WINDOW, **common),
                                Gemma3TextConfig(sliding_window=10**6, **common), 43, 47, "the sliding window", {})
    save_greedy(name, model, without, common["vocab_size"], "the sliding window")


def gen_gemma2():
    name = "tiny_gemma2"
    common = dict(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24, max_position_embeddings=256,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0,
                  sliding_window=WINDOW, rope_theta=10000.0)
    model, without = gen_packed(name, Gemma2ForCausalLM,
                                Gemma2Config(attn_logit_softcapping=2.0, final_logit_softcapping=3.0, **common),
                                Gemma2Config(attn_logit_softcapping=None, final_logit_softcapping=None, **common), 53,
                                59, "soft-capping", {})
    save_greedy(name, model, without, common["vocab_size"], "soft-capping")


def gen_mistral_sw():
    name = "tiny_mistral_sw"
    config = MistralConfig(vocab_size=352, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                           rope_theta=10000.0, rms_norm_eps=1e-5, sliding_window=WINDOW, tie_word_embeddings=False,
                           bos_token_id=1, eos_token_id=2)
    model, full = gen_packed(name, MistralForCausalLM, config,
                             MistralConfig(**{**config.to_dict(), "sliding_window": None}), 7, 17, "the sliding window",
                             {"sliding_window": WINDOW})
    save_greedy(name, model, full, config.vocab_size, "the sliding window")


def gen_rope_scaled(name, rope, legacy, seed, cls=LlamaForCausalLM, config_cls=LlamaConfig, changes=True, **extra):
    """A tiny random model of the class (Llama by default) with `rope` scaling; `extra` config fields override the
    common ones. Unless changes is False (a scaling that keeps the default frequencies on this batch), the default
    rope must give other logits. Returns the model."""
    common = dict(vocab_size=288, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    common.update(extra)
    without = config_cls(rope_theta=10000.0, **common)
    model, _ = gen_packed(name, cls, config_cls(rope_parameters={"rope_theta": 10000.0, **rope}, **common),
                          without if changes else None, seed, seed + 10, "its rope scaling", {"rope": json.dumps(rope)})
    if legacy:  # transformers 4.x's layout: rope_theta at the top, the scaling under rope_scaling
        p = OUT / name / "config.json"
        cfg = json.loads(p.read_text())
        params = cfg.pop("rope_parameters")
        cfg["rope_theta"] = params.pop("rope_theta")
        if isinstance(legacy, str):  # the older "type" key (Phi-3's "su") in place of rope_type
            params = {**{k: v for k, v in params.items() if k != "rope_type"}, "type": legacy}
        cfg["rope_scaling"] = params
        p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        reloaded = load_hf_fp32(OUT / name)  # the rewritten config.json must describe the same model
        tokens = packed_tokens(common["vocab_size"], SEQ_LENS, seed=seed + 10)
        assert maxdiff(run_packed(reloaded, tokens, SEQ_LENS)[1], run_packed(model, tokens, SEQ_LENS)[1]) == 0, name
    return model


def gen_yarn():
    # Llama, transformers' defaults (beta 32/1, truncated band, attention factor 0.1 ln 4 + 1); an original context of
    # 64 puts head_dim 16's band over frequencies 0..3: one kept, two blended, the rest divided by 4
    gen_rope_scaled("tiny_yarn_rope", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
                    legacy=False, seed=61, max_position_embeddings=256)
    # Qwen2 in the 4.x layout, every option: another band (16/2 rotations, not truncated) and the attention factor
    # of mscale / mscale_all_dim
    gen_rope_scaled("tiny_yarn_qwen2", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                        "beta_fast": 16.0, "beta_slow": 2.0, "truncate": False, "mscale": 1.0,
                                        "mscale_all_dim": 0.5},
                    legacy=True, seed=67, cls=Qwen2ForCausalLM, config_cls=Qwen2Config, max_position_embeddings=256,
                    use_sliding_window=False)


def gen_phi3_longrope():
    # Phi-3.5-mini's layout (4.x: rope_scaling of type "su", original_max_position_embeddings at the top) shrunk: an
    # original context of 32 holds the packed batch (short factors); factor 256 / 32 = 8 gives the attention factor
    # sqrt(1 + ln 8 / ln 32); the sliding window of tiny_phi3
    name = "tiny_phi3_longrope"
    rope = {"rope_type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 3.8],
            "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 13.0, 18.0]}
    common = dict(original_max_position_embeddings=32, max_position_embeddings=256, sliding_window=6, pad_token_id=0)
    model = gen_rope_scaled(name, rope, legacy="su", seed=73, cls=Phi3ForCausalLM, config_cls=Phi3Config, **common)
    # as llama.cpp's converter writes it (fused attn_qkv and ffn_up, rope_factors_short/long, the window's key);
    # transformers reads such a file without the window and the longrope factors: the file must give back the
    # weights as that model, the C test checks it against the reference above
    path = OUT / name / "gguf" / f"{name}.F32.gguf"
    path.parent.mkdir(exist_ok=True)
    write_gguf(model, path, gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32, name, with_vocab=False)
    plain = make_tiny(name, Phi3ForCausalLM, Phi3Config(**{**model.config.to_dict(), "sliding_window": None,
                                                          "rope_parameters": {"rope_theta": 10000.0}}), seed=73)
    plain.load_state_dict(model.state_dict())
    tokens = packed_tokens(model.config.vocab_size, SEQ_LENS, seed=83)
    diff = maxdiff(run_packed(load_gguf_fp32(path), tokens, SEQ_LENS)[1], run_packed(plain, tokens, SEQ_LENS)[1])
    assert diff < 1e-5, f"{name}: the GGUF does not hold the model's weights ({diff})"
    print(f"{name}.F32.gguf: transformers' reading of it vs the weights without window and longrope {diff:.2e}")


def gen_dynamic():
    # within max_position_embeddings dynamic NTK scaling keeps the default frequencies: nothing to differ from
    gen_rope_scaled("tiny_dynamic_rope", {"rope_type": "dynamic", "factor": 2.5}, legacy="dynamic", seed=71,
                    changes=False, max_position_embeddings=256)


def gen_qwen3():
    name = "tiny_qwen3"
    config = Qwen3Config(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                         rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
                         bos_token_id=1, eos_token_id=2)
    gen_packed(name, Qwen3ForCausalLM, config, None, 29, 31, "", {})


def gen_phi3():
    name = "tiny_phi3"
    common = dict(vocab_size=272, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    gen_packed(name, Phi3ForCausalLM, Phi3Config(sliding_window=6, **common), Phi3Config(sliding_window=None, **common),
               37, 41, "the sliding window", {})


if __name__ == "__main__":
    torch.set_num_threads(1)
    only = sys.argv[1:]  # names of generators to run (gemma3, mistral_sw, ...); all without
    if only:
        for what in only:
            globals()[f"gen_{what}"]()
        sys.exit(0)
    gen_gemma3()
    gen_gemma2()
    gen_mistral_sw()
    gen_qwen3()
    gen_phi3()
    gen_rope_scaled("tiny_llama3_rope", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                    legacy=False, seed=11)
    gen_rope_scaled("tiny_linear_rope", {"rope_type": "linear", "factor": 2.0}, legacy=True, seed=13)
    gen_yarn()
    gen_phi3_longrope()
    gen_dynamic()
