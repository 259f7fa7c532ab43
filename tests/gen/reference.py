"""Reference definitions shared by the fixture generators (tests/gen/gen_*.py) and the PyTorch baselines
(bench/*.py, which put tests/gen on sys.path): the Medusa heads as the reference Medusa code
(medusa-llm: medusa/model/medusa_model.py) defines them, the heads' targets, the random weights of the test
models, and a reader of medusa-c's token cache."""
import numpy as np
import torch
import torch.nn as nn

IGNORE = -100  # HF / reference ignore index


class ResBlock(nn.Module):
    """Verbatim the reference ResBlock: x + SiLU(W x + b), W zero-initialised (identity at start)."""

    def __init__(self, hidden_size):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        torch.nn.init.zeros_(self.linear.weight)
        self.act = nn.SiLU()

    def forward(self, x):
        return x + self.act(self.linear(x))


def make_heads(base_lm_head, num_heads, num_layers, shared_blocks=False):
    """The reference medusa_head ModuleList: per head, num_layers ResBlocks and an lm_head Linear (no bias)
    that starts as a copy of base_lm_head [V, H]. shared_blocks: the reference's literal
    `[ResBlock(H)] * num_layers`, one block applied num_layers times (see gen_medusa.py's QUIRK); otherwise
    independent blocks per layer, as medusa-c, vLLM and TensorRT-LLM read them (the same with one layer).
    Built in the reference's order (head by head: blocks, then the lm_head Linear), so under a fixed
    torch.manual_seed the default bias init is reproducible; the lm_head is then overwritten by the copy."""
    H = base_lm_head.shape[1]
    V = base_lm_head.shape[0]
    heads = nn.ModuleList([
        nn.Sequential(*([ResBlock(H)] * num_layers if shared_blocks else [ResBlock(H) for _ in range(num_layers)]),
                      nn.Linear(H, V, bias=False))
        for _ in range(num_heads)])
    with torch.no_grad():
        for i in range(num_heads):
            heads[i][-1].weight.data.copy_(base_lm_head)
    return heads.float()


def head_targets(seqs, num_heads, pad_to=0):
    """model/medusa.c medusa_targets on a list of (tokens, loss_mask) sequences: head h at position t predicts
    the token at t+2+h of the same sequence where its loss_mask is set, else IGNORE. pad_to: each sequence's
    labels right-padded with IGNORE to that length (the reference trainer's padding="max_length").
    Returns one int64 tensor per head, the sequences' labels concatenated."""
    out = []
    for h in range(num_heads):
        parts = []
        for tok, mask in seqs:
            t = np.full(max(len(tok), pad_to), IGNORE, dtype=np.int64)
            k = 2 + h
            if len(tok) > k:
                t[:len(tok) - k] = np.where(mask[k:] != 0, tok[k:], IGNORE)
            parts.append(t)
        out.append(torch.from_numpy(np.concatenate(parts)))
    return out


def randomise(model, seed, std=0.15, bias_std=0.2):
    """Re-initialise every parameter with values that make bugs visible: the default init (std 0.02,
    norms = 1, biases = 0) would let a missing norm weight, bias or a transposed matrix go unnoticed.
    Norm gains U[0.6, 1.4), biases N(0, bias_std^2), every other weight N(0, std^2), drawn in parameter order
    from a generator seeded with seed. (std 0.15 keeps attention scores around 1, neither uniform nor one-hot,
    for hidden 64.)"""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.6 + 0.8 * torch.rand(p.shape, generator=g))        # norm gains in [0.6, 1.4)
            elif name.endswith(".bias"):
                p.copy_(bias_std * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model


def read_token_cache(path):
    """A medusa-data token cache (*.tokens.h5): (tokens, loss_mask, conv_offsets) as numpy arrays;
    conversation c is tokens[conv_offsets[c]:conv_offsets[c + 1]]."""
    import h5py  # only the readers of token caches need it

    with h5py.File(path, "r") as f:
        return f["tokens"][:], f["loss_mask"][:], f["conv_offsets"][:]
