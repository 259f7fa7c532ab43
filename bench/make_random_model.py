"""A Llama-family base model with random weights and a random token cache, for timing on a machine that
cannot download a real model (the GPU bench machine reaches no network). Throughput and MFU depend on the
shapes, not on the values, so a random Llama-2-7B times the training step as the real one does; accuracy
and Medusa acceptance are meaningless on it.

    python3 bench/make_random_model.py --shape llama-2-7b --out DIR
writes DIR/config.json, DIR/model.safetensors (bf16; on the GPU when torch sees one) and
DIR/bench.train.tokens.h5 (conversations of random lengths, the first quarter of each untrained), both in the
formats medusa-c and transformers read, and DIR/prompts.json (token-id prompts for medusa-infer --bench, the model
having no tokenizer). --shape tiny gives a small model for dry runs."""
import argparse
import json
import os

import h5py
import numpy as np
import torch
from safetensors.torch import save_file

SHAPES = {
    # name: hidden, intermediate, layers, heads, kv heads, vocab
    "llama-2-7b": (4096, 11008, 32, 32, 32, 32000),
    "llama-3-8b": (4096, 14336, 32, 32, 8, 128256),
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152),
    "tiny": (128, 352, 2, 2, 1, 512),  # head_dim 64: the tensor-core attention runs in dry runs
}

p = argparse.ArgumentParser()
p.add_argument("--shape", default="llama-2-7b", choices=sorted(SHAPES))
p.add_argument("--out", required=True)
p.add_argument("--tokens", type=int, default=400_000, help="tokens in the random token cache")
p.add_argument("--max-len", type=int, default=2048, help="longest conversation")
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()

H, I, L, NH, NKV, V = SHAPES[a.shape]
os.makedirs(a.out, exist_ok=True)
config = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": H,
    "intermediate_size": I,
    "num_hidden_layers": L,
    "num_attention_heads": NH,
    "num_key_value_heads": NKV,
    "vocab_size": V,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}
with open(os.path.join(a.out, "config.json"), "w") as f:
    json.dump(config, f, indent=2)

dev = "cuda" if torch.cuda.is_available() else "cpu"
gen = torch.Generator(device=dev).manual_seed(a.seed)


def normal(*shape):
    # std 0.02 as Llama's initialisation: activations stay in range through the layers
    return (torch.randn(*shape, generator=gen, device=dev, dtype=torch.float32) * 0.02).to(torch.bfloat16).cpu()


D = H // NH
tensors = {"model.embed_tokens.weight": normal(V, H), "lm_head.weight": normal(V, H),
           "model.norm.weight": torch.ones(H, dtype=torch.bfloat16)}
for l in range(L):
    pre = f"model.layers.{l}."
    tensors[pre + "input_layernorm.weight"] = torch.ones(H, dtype=torch.bfloat16)
    tensors[pre + "post_attention_layernorm.weight"] = torch.ones(H, dtype=torch.bfloat16)
    tensors[pre + "self_attn.q_proj.weight"] = normal(NH * D, H)
    tensors[pre + "self_attn.k_proj.weight"] = normal(NKV * D, H)
    tensors[pre + "self_attn.v_proj.weight"] = normal(NKV * D, H)
    tensors[pre + "self_attn.o_proj.weight"] = normal(H, NH * D)
    tensors[pre + "mlp.gate_proj.weight"] = normal(I, H)
    tensors[pre + "mlp.up_proj.weight"] = normal(I, H)
    tensors[pre + "mlp.down_proj.weight"] = normal(H, I)
save_file(tensors, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
n_params = sum(t.numel() for t in tensors.values())
del tensors

# conversations of random lengths; the first quarter of each is the "user" turn (untrained), BOS first
rng = np.random.default_rng(a.seed)
lens = []
while sum(lens) < a.tokens:
    lens.append(int(rng.integers(64, a.max_len + 1)))
offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
tokens = rng.integers(3, V, size=int(offsets[-1]), dtype=np.int32)
mask = np.zeros(len(tokens), np.uint8)
for c, n in enumerate(lens):
    tokens[offsets[c]] = 1
    mask[offsets[c] + n // 4:offsets[c + 1]] = 1
with h5py.File(os.path.join(a.out, "bench.train.tokens.h5"), "w") as f:
    f["tokens"] = tokens
    f["loss_mask"] = mask
    f["conv_offsets"] = offsets
    f.attrs["format_version"] = np.int64(1)
    f.attrs["vocab_size"] = np.int64(V)
    f.attrs["max_len"] = np.int64(a.max_len)
    f.attrs["template"] = "random"
    f.attrs["source"] = "bench/make_random_model.py"
    f.attrs["split"] = "train"
prompts = [[1] + rng.integers(3, V, size=int(n)).tolist() for n in (100, 200, 300, 400)]
with open(os.path.join(a.out, "prompts.json"), "w") as f:
    json.dump(prompts, f)
print(f"{a.out}: random {a.shape} ({n_params / 1e9:.2f}B parameters, bf16), {len(lens)} conversations, "
      f"{len(tokens)} tokens")
