#!/usr/bin/env python3
"""Golden fixtures for Medusa head training: forward, loss, top-k hits, gradients, AdamW steps, export.

Run by hand from the repository root (never in CI; ~10 s on a CPU, no network):

    .venv/bin/python tests/gen/gen_medusa.py              # rewrites tests/fixtures/medusa/
    .venv/bin/python tests/gen/gen_medusa.py --targets    # only the distillation cases (case_base_*), from the
                                                          # committed base/, batches and export_ref/

Layout and every key: tests/fixtures/medusa/README.md.

Everything is computed in fp32 with PyTorch, exactly as a PyTorch training run would (the C code is fp32).

The heads are defined as the reference Medusa code defines them (FasterDecoding/Medusa,
medusa/model/medusa_model.py; the PyPI package medusa-llm 0.1 has the same classes):

    class ResBlock(nn.Module):
        def __init__(self, hidden_size):
            super().__init__()
            self.linear = nn.Linear(hidden_size, hidden_size)
            torch.nn.init.zeros_(self.linear.weight)      # identity at init; bias keeps nn.Linear's default init
            self.act = nn.SiLU()
        def forward(self, x):
            return x + self.act(self.linear(x))

    self.medusa_head = nn.ModuleList([
        nn.Sequential(*([ResBlock(self.hidden_size)] * medusa_num_layers),
                      nn.Linear(self.hidden_size, self.vocab_size, bias=False))
        for _ in range(medusa_num_heads)])
    for i in range(medusa_num_heads):
        self.medusa_head[i][-1].weight.data[:] = base_model.lm_head.weight.data[:]

QUIRK (ResBlock sharing): `[ResBlock(H)] * L` is a list of L references to ONE module, so in the reference the
L "layers" of a head share one weight and one bias (the block is applied L times; its gradient is the sum of
the L uses). With L = 1 (the default, and what every published Medusa-1 checkpoint uses) this makes no
difference. We treat layers as independent (as vLLM's and TensorRT-LLM's loaders do: they read
`{h}.{l}.linear.*` per layer); our L = 2 fixture (case A2) builds two independent ResBlocks per head
explicitly: `nn.Sequential(*[ResBlock(H) for _ in range(L)], lm_head)`. Note that `state_dict()` of the
reference module still lists both `{h}.0.linear.*` and `{h}.1.linear.*` (state_dict does not deduplicate
shared modules; named_parameters() does), so the on-disk key layout is the same either way.

Loss (reference medusa/train/train.py, CustomizedTrainer.compute_loss):
    for i in range(medusa):
        medusa_logits = logits[i, :, : -(2 + i)]          # head i at position t ...
        medusa_labels = labels[..., 2 + i :]              # ... predicts the token at t + 2 + i
        loss_i = CrossEntropyLoss()(medusa_logits, medusa_labels)   # mean over labels != -100
        loss += loss_i
The legacy trainer sums the heads unweighted; Medusa-2 (the axolotl integration) weights them: there index 0
is the base lm_head (offset 1) and Medusa head j (offset 2+j) is index i = j + 1, weighted
medusa_decay_coefficient ** i * medusa_heads_coefficient (0.8 and 0.2 in most of its examples/medusa configs;
the code defaults to 1.0 and 0.1). Our loss is sum_i lambda^i * loss_i over 0-based Medusa heads (lambda = 0.8):
the same relative weights as Medusa-2 up to the constant factor 0.8 * heads_coefficient; lambda = 1 gives the
legacy sum.
Top-k (same function): topk(k) of the logits at non-ignored positions, hit if the label is among them, for
k = 1..5 (legacy) / 1..9 or 1..10 (Medusa-2). We store counts of hits and of valid positions.

Packing: the reference pads each conversation to model_max_length and never packs; a target is ignored when
its label is -100 (BOS, user/system turns, padding). A padded row never predicts across rows, and the mean is
over all valid positions of the whole batch. Our packed batch is the same thing without padding: targets that
would fall in the next sequence are ignored, and the mean is over all valid positions of the packed batch.

Training (HF Trainer, which the reference uses): per optimizer step
    (loss / grad_accum).backward() for each micro-batch   # Trainer divides when the model takes no
                                                          # num_items_in_batch (the Medusa model does not)
    clip_grad_norm_(all head params, max_grad_norm=1.0)   # Trainer default max_grad_norm is 1.0
    optimizer.step(); scheduler.step(); zero_grad()
AdamW param groups as Trainer.create_optimizer builds them: weight decay on every parameter EXCEPT those whose
name matches "bias" (and norms; heads have none), i.e. `linear.bias` gets weight_decay 0.
The script checks the hand-written loop against a real transformers.Trainer run (cases B and C: identical
bits), the packed loss/top-k against the reference's own padded computation, the exports by loading them
into modules named as the reference / vLLM name them, and the README's clip + AdamW formulas by replaying
them in numpy from the stored gradients.

Conditioning (printed at the end): everything is recomputed in float64 from the same fp32 inputs. Forward,
loss, gradients and Adam moments are within ~1e-6 of exact (per tensor, relative to the tensor's max), so
1e-5 is a fair bar for them. AdamW params that start at zero (the ResBlock W) are NOT: Adam normalises
every element, so an element whose gradients are tiny (cancellation; or |g| within a few decades of eps)
takes a step of size ~lr whose exact value depends on the relative error of that tiny gradient. The fp32
reference itself is ~1-2e-5 (relative to max|W| ~ lr) away from exact there. Hence the stored pre-clip
gradients `gin{s}.*`: a C test checks its gradients against them (1e-5) and its clip + AdamW by replaying
them (1e-6), and checks W end to end with a looser bar (1e-4). See tests/fixtures/medusa/README.md.

Size (< 3 MB in all): case A's gradients and case B's final params are complete; the V x H lm_head tensors
(98 KB each) of case A2's gradients and case C's params are stored for the last head only, and case B's
moments and pre-clip gradients for the ResBlock params only (see keep()).
"""

import copy
import json
import math
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from safetensors.numpy import save_file
from transformers import LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup

from reference import IGNORE, ResBlock, make_heads, randomise

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "medusa"

K = 3                  # Medusa heads
LAMBDA = 0.8           # head i weighted LAMBDA**i
TOPK = 5               # hits for k = 1..TOPK

# Base model: tiny random Llama (same shape as tests/fixtures/models/tiny_llama, different weights).
BASE_SEED = 1234
BASE_STD = 0.2

# Packed batches: sequence lengths and loss masks as (value, run length) runs.
# Each sequence starts with a masked BOS + prompt, then trained reply spans (some multi-turn).
BATCHES = [
    [  # batch 0: 40 tokens
        [(0, 6), (1, 10)],                          # BOS + prompt, reply
        [(0, 4), (1, 4), (0, 3), (1, 2)],           # two turns
        [(0, 3), (1, 8)],
    ],
    [  # batch 1: 41 tokens
        [(0, 6), (1, 7), (0, 5)],                   # reply then a masked tail (e.g. a truncated next user turn)
        [(0, 2), (1, 2)],                           # 4 tokens: head 2 has no position inside it
        [(0, 19)],                                  # whole sequence masked (e.g. a tokenization mismatch)
    ],
    [  # batch 2: 39 tokens
        [(0, 7), (1, 6), (0, 4), (1, 5)],
        [(0, 2), (1, 15)],
    ],
]
TOKEN_SEED = 77

# Case A (gradients): random head params.
A_SEED = 2024
A_W_STD, A_B_STD, A_LM_NOISE = 0.05, 0.05, 0.01

# Case B / C (training).
INIT_SEED = 99         # torch.manual_seed before building the heads: the nn.Linear default bias init
LR = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8
WD = 0.01
MAX_GRAD_NORM = 1.0
WARMUP_RATIO = 0.1


# ---------------------------------------------------------------------------------------------------------
# the heads, as the reference defines them (ResBlock, make_heads: reference.py)
# ---------------------------------------------------------------------------------------------------------

def reference_quirk_check(H, V):
    """Document the reference's shared-ResBlock behaviour on the installed torch."""
    seq = nn.Sequential(*([ResBlock(H)] * 2), nn.Linear(H, V, bias=False))
    n_params = len(list(seq.parameters()))
    keys = list(seq.state_dict().keys())
    assert seq[0] is seq[1]
    assert n_params == 3, n_params                      # W, b (once), lm_head
    assert keys == ["0.linear.weight", "0.linear.bias", "1.linear.weight", "1.linear.bias", "2.weight"], keys


def head_keys(num_heads, num_layers):
    """Parameter names of the head ModuleList = keys of medusa_head.state_dict() (Medusa v1 file)."""
    keys = []
    for h in range(num_heads):
        for l in range(num_layers):
            keys += [f"{h}.{l}.linear.weight", f"{h}.{l}.linear.bias"]
        keys.append(f"{h}.{num_layers}.weight")
    return keys


def state_np(heads):
    return {k: v.detach().cpu().numpy().copy() for k, v in heads.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------
# base model and batches
# ---------------------------------------------------------------------------------------------------------

def make_base():
    cfg = LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                      rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2)
    cfg._attn_implementation = "eager"
    torch.manual_seed(BASE_SEED)
    model = randomise(LlamaForCausalLM(cfg), BASE_SEED, std=BASE_STD, bias_std=BASE_STD)
    return model.float().eval()


def expand_mask(runs):
    return np.concatenate([np.full(n, v, np.int32) for v, n in runs])


def make_targets(tokens, seq_lens, loss_mask, num_heads):
    """targets[i][t] = token at t+2+i if it lies in the same sequence as t and its loss_mask is 1, else -100."""
    T = len(tokens)
    tgt = np.full((num_heads, T), IGNORE, np.int64)
    off = 0
    for n in seq_lens:
        for t in range(off, off + n):
            for i in range(num_heads):
                u = t + 2 + i
                if u < off + n and loss_mask[u] == 1:
                    tgt[i, t] = tokens[u]
        off += n
    return tgt


def run_packed_hidden(model, tokens, seq_lens):
    """Each sequence on its own (positions from 0), last hidden state (after the final RMSNorm), concatenated."""
    hid = []
    off = 0
    for n in seq_lens:
        ids = torch.from_numpy(tokens[off:off + n].astype(np.int64))[None]
        seen = {}
        hook = model.model.norm.register_forward_hook(lambda m, i, o: seen.update(post=o))
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        hook.remove()
        h = out.hidden_states[-1][0]
        assert torch.equal(h, seen["post"][0]), "hidden_states[-1] is not the final norm's output"
        assert (model.lm_head(h) - out.logits[0]).abs().max().item() < 1e-5
        hid.append(h.float().numpy())
        off += n
    return np.concatenate(hid)


def prefix_hidden(model, ids):
    """Hidden state (after the final norm) at the last position of a prefix."""
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids.astype(np.int64))[None], output_hidden_states=True,
                    use_cache=False)
    return out.hidden_states[-1][0, -1]


def make_batches(model, tailor_heads):
    """Random token ids, except that most trained tokens are picked so that top-k hits are informative:
    random ids would almost never be in a head's top 5 (V = 384). For a trained token at position u we pick a
    head i (cycling) whose position t = u-2-i is in the same sequence, compute that head's logits at t with
    the case-A heads (`tailor_heads`) from the prefix, and take the token of rank r (r = 0..4 or a random
    token). Heads are causal, so choosing token u never changes the hidden state at t < u."""
    rng = np.random.default_rng(TOKEN_SEED)
    V = model.config.vocab_size
    batches = []
    for spec in BATCHES:
        seq_lens = [sum(n for _, n in runs) for runs in spec]
        mask = np.concatenate([expand_mask(r) for r in spec])
        tokens = np.zeros(sum(seq_lens), np.int32)
        off = 0
        for n in seq_lens:
            assert mask[off] == 0
            tokens[off] = model.config.bos_token_id            # each sequence starts with BOS
            for u in range(1, n):
                heads_ok = [i for i in range(K) if u - 2 - i >= 0]
                r = rng.choice(7, p=[0.25, 0.1, 0.1, 0.1, 0.1, 0.05, 0.3])   # rank 0..5, or 6 = random token
                if mask[off + u] == 1 and heads_ok and r < 6:
                    i = heads_ok[u % len(heads_ok)]
                    h = prefix_hidden(model, tokens[off:off + u - 1 - i])       # positions 0 .. t = u-2-i
                    with torch.no_grad():
                        lg = tailor_heads[i](h)
                    tokens[off + u] = int(lg.argsort(descending=True)[r])
                else:
                    tokens[off + u] = rng.integers(3, V)                   # avoid the special ids 0..2
            off += n
        hidden = run_packed_hidden(model, tokens, seq_lens)
        tgt = make_targets(tokens, seq_lens, mask, K)
        batches.append(dict(tokens=tokens, seq_lens=np.asarray(seq_lens, np.int32), loss_mask=mask,
                            hidden=hidden, targets=tgt))
    return batches


# ---------------------------------------------------------------------------------------------------------
# loss, hits
# ---------------------------------------------------------------------------------------------------------

def medusa_forward_loss(heads, batch, lam=LAMBDA):
    """Returns total loss (fp32 scalar tensor), per-head losses, per-head logits [T, V]."""
    x = torch.from_numpy(batch["hidden"]).to(heads[0][-1].weight.dtype)
    loss = 0
    losses, logits = [], []
    for i in range(len(heads)):
        lg = heads[i](x)
        tg = torch.from_numpy(batch["targets"][i])
        li = F.cross_entropy(lg, tg, ignore_index=IGNORE)     # = nn.CrossEntropyLoss(): mean over valid
        loss = loss + li * (lam ** i)
        losses.append(li)
        logits.append(lg)
    return loss, losses, logits


def topk_hits(logits, targets):
    """hits[k-1] = number of valid positions whose target is among the k largest logits, k = 1..TOPK."""
    valid = targets != IGNORE
    lg = logits[valid]
    tg = targets[valid]
    hits = []
    for k in range(1, TOPK + 1):
        _, idx = lg.topk(k, dim=-1)
        hits.append(int(idx.eq(tg.unsqueeze(-1)).any(-1).sum()))
    return np.asarray(hits, np.int32), int(valid.sum())


def topk_margin(logits, targets):
    """Smallest logit gap that decides a top-1..TOPK hit: the target vs its neighbours in the sorted order, when
    the target ranks within TOPK+1. A fp32 re-computation could flip a hit only if this is ~1e-6."""
    m = float("inf")
    for t in range(len(targets)):
        if targets[t] == IGNORE:
            continue
        s, idx = logits[t].sort(descending=True)
        r = int((idx == targets[t]).nonzero()[0, 0])
        if r <= TOPK:
            if r >= 1:
                m = min(m, float(s[r - 1] - s[r]))
            if r + 1 < len(s) and r < TOPK:
                m = min(m, float(s[r] - s[r + 1]))
    return m


def reference_loss(heads, batch, lam=LAMBDA):
    """The reference's own computation (CustomizedTrainer.compute_loss) on the UNPACKED batch: every sequence a
    row padded to the longest (labels -100 on padding and where loss_mask is 0), logits [K, B, T, V], head i
    compares logits[i, :, :-(2+i)] with labels[..., 2+i:]. Returns the weighted loss and per-head top-k
    accuracies (fractions), to check that our packed formulation is the same thing."""
    seq_lens = batch["seq_lens"].tolist()
    Tm = max(seq_lens)
    hid = torch.zeros(len(seq_lens), Tm, batch["hidden"].shape[1], dtype=heads[0][-1].weight.dtype)
    labels = torch.full((len(seq_lens), Tm), IGNORE, dtype=torch.long)
    off = 0
    for r, n in enumerate(seq_lens):
        hid[r, :n] = torch.from_numpy(batch["hidden"][off:off + n])
        lab = torch.from_numpy(batch["tokens"][off:off + n].astype(np.int64))
        labels[r, :n] = torch.where(torch.from_numpy(batch["loss_mask"][off:off + n]) == 1, lab, IGNORE)
        off += n
    logits = torch.stack([heads[i](hid) for i in range(len(heads))], dim=0)
    loss, acc = 0, []
    for i in range(len(heads)):
        medusa_logits = logits[i, :, : -(2 + i)].contiguous().view(-1, logits.shape[-1])
        medusa_labels = labels[..., 2 + i:].contiguous().view(-1)
        loss_i = nn.CrossEntropyLoss()(medusa_logits, medusa_labels)
        loss = loss + loss_i * lam ** i
        not_ignore = medusa_labels.ne(IGNORE)
        medusa_labels = medusa_labels[not_ignore]
        row = []
        for k in range(1, TOPK + 1):
            _, topk = medusa_logits.topk(k, dim=-1)
            topk = topk[not_ignore]
            row.append(topk.eq(medusa_labels.unsqueeze(-1)).any(-1).float().mean().item())
        acc.append(row)
    return loss, acc


def params_with_decay(heads):
    """Trainer.get_decay_parameter_names: everything but names matching "bias" / norms."""
    decay = [p for n, p in heads.named_parameters() if "bias" not in n]
    no_decay = [p for n, p in heads.named_parameters() if "bias" in n]
    return [{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------------------

def randomise_heads(heads, base_lm_head, seed, layers=None):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for h in range(len(heads)):
            L = len(heads[h]) - 1
            for l in range(L):
                if layers is not None and l not in layers:
                    continue
                heads[h][l].linear.weight.copy_(A_W_STD * torch.randn(heads[h][l].linear.weight.shape, generator=g))
                heads[h][l].linear.bias.copy_(A_B_STD * torch.randn(heads[h][l].linear.bias.shape, generator=g))
            if layers is None or L in layers:
                heads[h][L].weight.copy_(base_lm_head + A_LM_NOISE * torch.randn(base_lm_head.shape, generator=g))


def grads_np(heads, prefix="grad."):
    return {prefix + n: p.grad.detach().numpy().copy() for n, p in heads.named_parameters()}


def case_a_heads(base_lm_head):
    heads = make_heads(base_lm_head, K, 1)
    randomise_heads(heads, base_lm_head, A_SEED)
    return heads


def case_a(heads, batch):
    loss, losses, logits = medusa_forward_loss(heads, batch)
    loss.backward()
    fdt = heads[0][-1].weight.detach().numpy().dtype          # float32 (float64 for the conditioning check)
    out = {"loss": np.asarray([loss.item()], fdt)}
    info = {}
    for i in range(K):
        tg = torch.from_numpy(batch["targets"][i])
        hits, nvalid = topk_hits(logits[i].detach(), tg)
        out[f"logits.{i}"] = logits[i].detach().numpy().copy()
        out[f"loss.{i}"] = np.asarray([losses[i].item()], fdt)
        out[f"valid.{i}"] = np.asarray([nvalid], np.int32)
        out[f"hits.{i}"] = hits
        info[f"topk_margin.{i}"] = topk_margin(logits[i].detach(), tg)
    out.update(grads_np(heads))
    with torch.no_grad():                       # the reference's padded, unpacked computation agrees
        ref_loss, ref_acc = reference_loss(heads, batch)
    assert abs(ref_loss.item() - loss.item()) <= 1e-6 * loss.item(), (ref_loss.item(), loss.item())
    for i in range(K):
        assert np.allclose(ref_acc[i], out[f"hits.{i}"] / out[f"valid.{i}"][0], rtol=0, atol=1e-7)
    return heads, out, info


def case_a2(heads_a, base_lm_head, batch, dtype=torch.float32):
    """L = 2, two independent ResBlocks per head: block 0 and the lm_head are case A's, block 1 is new."""
    heads = make_heads(base_lm_head, K, 2).to(dtype)
    with torch.no_grad():
        for h in range(K):
            heads[h][0].load_state_dict(heads_a[h][0].state_dict())
            heads[h][2].load_state_dict(heads_a[h][1].state_dict())
    randomise_heads(heads, base_lm_head, A_SEED + 1, layers=[1])
    assert heads[0][0] is not heads[0][1]
    loss, losses, _ = medusa_forward_loss(heads, batch)
    loss.backward()
    fdt = heads[0][-1].weight.detach().numpy().dtype
    out = {"loss": np.asarray([loss.item()], fdt)}
    for i in range(K):
        out[f"loss.{i}"] = np.asarray([losses[i].item()], fdt)
    for h in range(K):
        out[f"param.{h}.1.linear.weight"] = heads[h][1].linear.weight.detach().numpy().copy()
        out[f"param.{h}.1.linear.bias"] = heads[h][1].linear.bias.detach().numpy().copy()
    out.update(grads_np(heads))
    return heads, out


def init_heads(base_lm_head):
    torch.manual_seed(INIT_SEED)
    return make_heads(base_lm_head, K, 1)


def train_manual(base_lm_head, micro_batches, grad_accum, total_steps, warmup_steps, dtype=torch.float32):
    """The HF Trainer inner loop, written out. micro_batches: list of batches, grad_accum per step.
    dtype=float64 is only used for the conditioning check (how far fp32 is from exact)."""
    heads = init_heads(base_lm_head).to(dtype)
    init = state_np(heads)
    opt = torch.optim.AdamW(params_with_decay(heads), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
    lrs, norms, step_losses, steps, gin = [], [], [], [], []
    mb = iter(micro_batches)
    for s in range(total_steps):
        tot = 0.0
        for _ in range(grad_accum):
            loss, _, _ = medusa_forward_loss(heads, next(mb))
            (loss / grad_accum).backward()
            tot += loss.item() / grad_accum
        gin.append(grads_np(heads, prefix=""))          # accumulated, before clipping
        norm = torch.nn.utils.clip_grad_norm_(heads.parameters(), MAX_GRAD_NORM)
        lrs.append(opt.param_groups[0]["lr"])
        norms.append(norm.item())
        step_losses.append(tot)
        opt.step()
        sched.step()
        opt.zero_grad()
        steps.append(state_np(heads))
    moments = {}
    for n, p in heads.named_parameters():
        st = opt.state[p]
        moments[f"exp_avg.{n}"] = st["exp_avg"].numpy().copy()
        moments[f"exp_avg_sq.{n}"] = st["exp_avg_sq"].numpy().copy()
        assert int(st["step"]) == total_steps
    return dict(init=init, steps=steps, lr=lrs, grad_norm=norms, step_loss=step_losses, moments=moments, gin=gin)


def train_with_hf_trainer(base_lm_head, micro_batches, grad_accum, total_steps, warmup):
    """The same training with transformers.Trainer itself (sequential sampler, CPU, fp32)."""

    class Wrap(nn.Module):
        def __init__(self, heads):
            super().__init__()
            self.medusa_head = heads

        def forward(self, idx):
            raise RuntimeError("unused")

    class Tr(transformers.Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            b = micro_batches[int(inputs["idx"][0])]
            loss, _, _ = medusa_forward_loss(model.medusa_head, b)
            return loss

    heads = init_heads(base_lm_head)
    ds = [{"idx": torch.tensor(i)} for i in range(len(micro_batches))]
    with tempfile.TemporaryDirectory() as tmp:
        args = transformers.TrainingArguments(
            output_dir=tmp, max_steps=total_steps, per_device_train_batch_size=1,
            gradient_accumulation_steps=grad_accum, learning_rate=LR, weight_decay=WD, adam_beta1=BETAS[0],
            adam_beta2=BETAS[1], adam_epsilon=EPS, max_grad_norm=MAX_GRAD_NORM, lr_scheduler_type="cosine",
            warmup_steps=warmup, optim="adamw_torch", train_sampling_strategy="sequential", use_cpu=True,
            report_to=[], save_strategy="no", logging_steps=1, dataloader_num_workers=0,
            remove_unused_columns=False, disable_tqdm=True, seed=0)
        tr = Tr(model=Wrap(heads), args=args, train_dataset=ds, data_collator=lambda f: {"idx": torch.stack(
            [x["idx"] for x in f])})
        tr.train()
        logs = [h for h in tr.state.log_history if "grad_norm" in h]
    return state_np(heads), logs


def compare_states(a, b):
    return max(float(np.abs(a[k] - b[k]).max() / max(1e-30, np.abs(b[k]).max())) for k in b)


# ---------------------------------------------------------------------------------------------------------
# distillation targets (medusa-train --targets): what head i at t learns from the base model's logits at row t+1+i
# ---------------------------------------------------------------------------------------------------------

MAP = np.arange(0, 384, 2, dtype=np.int64)     # truncated heads: the even tokens (EOS, 2, among them)


def restrict(heads, token_map):
    """Truncated heads (--head-vocab): the same ResBlocks, lm_head rows token_map[r] (vLLM's truncated heads)."""
    H = heads[0][-1].weight.shape[1]
    out = make_heads(torch.zeros(len(token_map), H, dtype=heads[0][-1].weight.dtype), K, 1).to(
        heads[0][-1].weight.dtype)
    with torch.no_grad():
        for h in range(K):
            out[h][0].load_state_dict(heads[h][0].state_dict())
            out[h][1].weight.copy_(heads[h][1].weight[torch.from_numpy(token_map)])
    return out


def targets_case(heads, base_lm_head, batch, kind, token_map=None):
    """Loss and gradients of `heads` when head i at position t learns from the base model's logits at row t+1+i
    (base_lm_head @ hidden[t+1+i], the base's prediction of the token head i guesses, given the true prefix), over
    the positions where the labels have a target (loss mask, same sequence); top-k hits are the labels'.
    kind "argmax": the hard label argmax(base logits) (first of equal maxima, as torch.argmax); a choice outside a
    truncated head's map is ignored. kind "kl": the soft target q = softmax(base logits), restricted to a truncated
    head's map and renormalised, by KL(q || softmax(head logits)) (F.kl_div), averaged over the positions. With
    token_map the heads are truncated (lm_head rows token_map[r])."""
    dtype = heads[0][-1].weight.dtype
    x = torch.from_numpy(batch["hidden"]).to(dtype)
    base_logits = x @ base_lm_head.to(dtype).T                  # [T, V]: the base model's logits at every row
    V = base_logits.shape[1]
    row_of = np.full(V, IGNORE, np.int64)                       # token -> lm_head row (IGNORE: outside the map)
    row_of[token_map if token_map is not None else np.arange(V)] = np.arange(
        len(token_map) if token_map is not None else V)
    T = x.shape[0]
    loss, out = 0, {}
    margin = float("inf")
    for i in range(K):
        labels = batch["targets"][i]
        valid = np.nonzero(labels != IGNORE)[0]
        lg = heads[i](x)
        teacher = base_logits[torch.from_numpy(valid + 1 + i)]   # row t+1+i for each valid t
        if kind == "argmax":
            choice = teacher.argmax(-1).numpy()
            top2 = teacher.detach().double().topk(2, dim=-1).values
            margin = min(margin, float((top2[:, 0] - top2[:, 1]).min()))
            tgt = np.full(T, IGNORE, np.int64)
            tgt[valid] = row_of[choice]
            assert (tgt != IGNORE).sum() > 0
            li = F.cross_entropy(lg, torch.from_numpy(tgt), ignore_index=IGNORE)
            out[f"target.{i}"] = tgt.astype(np.int32)
        else:
            if token_map is not None:
                teacher = teacher[:, torch.from_numpy(token_map)]
            li = F.kl_div(F.log_softmax(lg[torch.from_numpy(valid)], -1), F.log_softmax(teacher, -1),
                          reduction="sum", log_target=True) / len(valid)
        loss = loss + li * LAMBDA ** i
        out[f"loss.{i}"] = np.asarray([li.item()], np.float64)
        lab = np.full(T, IGNORE, np.int64)                      # the labels' rows: top-k hits, a label outside a miss
        lab[valid] = row_of[labels[valid]]
        hits, _ = topk_hits(lg.detach(), torch.from_numpy(lab))
        out[f"hits.{i}"] = hits
        out[f"valid.{i}"] = np.asarray([len(valid)], np.int32)
    loss.backward()
    out["loss"] = np.asarray([loss.item()], np.float64)
    out.update(grads_np(heads))
    assert kind != "argmax" or margin > 1e-4, margin            # fp32 noise cannot change a choice
    return out, margin


def write_case_targets():
    """case_base_{argmax,kl}.safetensors from the committed base/, batches (batch 0) and export_ref/ (case A's heads):
    full-vocabulary heads, and truncated ones (map. keys) over MAP; every float computed in fp32 and float64 (the
    distance to exact arithmetic is printed)."""
    from safetensors.numpy import load_file
    base_lm_head = torch.from_numpy(load_file(str(OUT / "base" / "model.safetensors"))["lm_head.weight"])
    bt = load_file(str(OUT / "batches.safetensors"))
    batch = {"hidden": bt["hidden.0"], "targets": np.stack([bt[f"target.0.{i}"] for i in range(K)]).astype(np.int64)}
    params = load_file(str(OUT / "export_ref" / "medusa_lm_head.safetensors"))
    heads = make_heads(base_lm_head, K, 1)
    heads.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    for kind in ("argmax", "kl"):
        f = {}
        for prefix, token_map in (("", None), ("map.", MAP)):
            for dtype in (torch.float32, torch.float64):
                h = copy.deepcopy(heads).to(dtype)
                if token_map is not None:
                    h = restrict(h, token_map)
                out, margin = targets_case(h, base_lm_head, batch, kind, token_map)
                if dtype == torch.float64:
                    err = max(float(np.abs(f[prefix + k] - v).max() / max(1e-300, np.abs(v).max()))
                              for k, v in out.items() if v.dtype == np.float64 and prefix + k in f)
                    continue
                f.update({prefix + k: v.astype(np.float32) if v.dtype == np.float64 else v
                          for k, v in out.items() if keep(k, 1)})
            if token_map is not None:
                f["map.token_map"] = token_map.astype(np.int32)
            print(f"case_base_{kind} {prefix or 'full '}: loss {f[prefix + 'loss'][0]:.6f}, per head "
                  f"{[round(float(f[prefix + f'loss.{i}'][0]), 4) for i in range(K)]}, hits "
                  f"{[f[prefix + f'hits.{i}'].tolist() for i in range(K)]}, valid "
                  f"{[int(f[prefix + f'valid.{i}'][0]) for i in range(K)]}; fp32 vs float64 {err:.2g}"
                  + (f"; smallest top-1 margin of the base's logits {margin:.3g}" if kind == "argmax" else ""))
        save_file(f, str(OUT / f"case_base_{kind}.safetensors"))
        (OUT / f"case_base_{kind}.safetensors").chmod(0o644)


# ---------------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------------

def write_export_ref(params, num_heads, num_layers, H, V, base_name):
    d = OUT / "export_ref"
    d.mkdir(parents=True)
    cfg = {"medusa_num_heads": num_heads, "medusa_num_layers": num_layers, "base_model_name_or_path": base_name,
           "hidden_size": H, "vocab_size": V}
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file({k: params[k] for k in head_keys(num_heads, num_layers)}, str(d / "medusa_lm_head.safetensors"))


def write_export_vllm(params, num_heads, num_layers, H, V):
    d = OUT / "export_vllm_ref"
    d.mkdir(parents=True)
    cfg = {"model_type": "medusa", "architectures": ["MedusaModel"], "num_heads": num_heads,
           "num_hidden_layers": num_layers, "hidden_size": H, "vocab_size": V, "truncated_vocab_size": V,
           "medusa_fc_bias": True}
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    t = {}
    for h in range(num_heads):
        for l in range(num_layers):
            t[f"blocks.{h}.layers.{l}.weight"] = params[f"{h}.{l}.linear.weight"]
            t[f"blocks.{h}.layers.{l}.bias"] = params[f"{h}.{l}.linear.bias"]
        t[f"lm_heads.{h}.weight"] = params[f"{h}.{num_layers}.weight"]
    save_file(t, str(d / "model.safetensors"))


# ---------------------------------------------------------------------------------------------------------

def rel_err(f32, f64):
    """Per tensor max|a-b| / max|b|: the worst tensor; and the worst element |a-b|/|b| over elements with
    |b| > 1e-3 * max|b| (what an elementwise rtol test would see)."""
    worst, wkey, elem = 0.0, None, (0.0, None)
    for k, v in f32.items():
        r = f64[k].astype(np.float64)
        d = np.abs(v.astype(np.float64) - r)
        e = float(d.max() / max(1e-300, np.abs(r).max()))
        if e > worst:
            worst, wkey = e, k
        big = np.abs(r) > 1e-3 * np.abs(r).max()
        if big.any():
            ee = float((d[big] / np.abs(r[big])).max())
            if ee > elem[0]:
                elem = (ee, k)
    return worst, wkey, elem


def replay_adamw(init, gins, lrs, norms):
    """Clip + AdamW written out in numpy fp32 from the README's formulas (an independent implementation):
    run on the stored pre-clip gradients `gin{s}` it must reproduce the stored params (ResBlock params)."""
    f = np.float32
    p = {k: v.copy() for k, v in init.items()}
    m = {k: np.zeros_like(v) for k, v in init.items()}
    v2 = {k: np.zeros_like(v) for k, v in init.items()}
    for s, (g_s, lr, norm) in enumerate(zip(gins, lrs, norms)):
        t = s + 1
        coef = min(f(1.0), f(MAX_GRAD_NORM) / (f(norm) + f(1e-6)))
        for k in p:
            g = g_s[k] * coef
            wd = 0.0 if "bias" in k else WD
            p[k] = p[k] * f(1.0 - lr * wd)
            m[k] = m[k] + f(1 - BETAS[0]) * (g - m[k])
            v2[k] = f(BETAS[1]) * v2[k] + f(1 - BETAS[1]) * g * g
            denom = np.sqrt(v2[k]) / f(math.sqrt(1 - BETAS[1] ** t)) + f(EPS)
            p[k] = p[k] - f(lr / (1 - BETAS[0] ** t)) * (m[k] / denom)
    return p, m, v2


def check_exports(a, batch, H, V):
    """Load both exports the way their consumers build the modules, strictly, and recompute case A's logits."""
    from safetensors.torch import load_file as load_t
    x = torch.from_numpy(batch["hidden"])
    cfg = json.loads((OUT / "export_ref" / "config.json").read_text())
    L = cfg["medusa_num_layers"]
    # reference Medusa: ModuleList of Sequential([ResBlock] * L, Linear(bias=False)) -- the shared-list form
    ref = nn.ModuleList([nn.Sequential(*([ResBlock(H)] * L), nn.Linear(H, V, bias=False))
                         for _ in range(cfg["medusa_num_heads"])])
    ref.load_state_dict(load_t(str(OUT / "export_ref" / "medusa_lm_head.safetensors")), strict=True)

    # vLLM's Medusa module names (vllm/model_executor/models/medusa.py): blocks[h].layers[l] (Linear with
    # bias iff config.medusa_fc_bias), applied as x = x + SiLU(layer(x)); lm_heads[h] (no bias)
    class ResidualBlock(nn.Module):
        def __init__(self, n, bias):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(H, H, bias=bias) for _ in range(n)])
            self.act = nn.SiLU()

        def forward(self, y):
            for layer in self.layers:
                y = y + self.act(layer(y))
            return y

    vc = json.loads((OUT / "export_vllm_ref" / "config.json").read_text())
    vm = nn.Module()
    vm.blocks = nn.ModuleList([ResidualBlock(vc["num_hidden_layers"], vc["medusa_fc_bias"])
                               for _ in range(vc["num_heads"])])
    vm.lm_heads = nn.ModuleList([nn.Linear(vc["hidden_size"], vc["truncated_vocab_size"], bias=False)
                                 for _ in range(vc["num_heads"])])
    vm.load_state_dict(load_t(str(OUT / "export_vllm_ref" / "model.safetensors")), strict=True)
    with torch.no_grad():
        for i in range(K):
            assert np.array_equal(ref[i](x).numpy(), a[f"logits.{i}"])
            assert np.array_equal(vm.lm_heads[i](vm.blocks[i](x)).numpy(), a[f"logits.{i}"])


def keep(key, num_layers):
    """Size budget (< 3 MB in all). Case A's gradients and case B's final params are complete; in case A2's
    gradients and case C's params the V x H lm_head tensors (98 KB each) are kept for the LAST head only
    (K-1, weight lambda^(K-1)); every ResBlock tensor is kept for every head. Case B stores moments and
    pre-clip gradients for the ResBlock params only."""
    lm = f".{num_layers}.weight"
    if key.endswith(lm) and key.count(".") >= 2:
        return key.endswith(f"{K - 1}{lm}")
    return True


def main():
    torch.set_num_threads(1)            # bit-reproducible reference values run to run
    torch.use_deterministic_algorithms(True)
    if OUT.exists():
        for p in OUT.iterdir():
            if p.name != "README.md":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    OUT.mkdir(parents=True, exist_ok=True)

    base = make_base()
    H, V = base.config.hidden_size, base.config.vocab_size
    reference_quirk_check(H, V)
    base.save_pretrained(OUT / "base")
    (OUT / "base" / "generation_config.json").unlink(missing_ok=True)
    # reload: the saved file reproduces the hidden states bit for bit
    base2 = LlamaForCausalLM.from_pretrained(OUT / "base", dtype=torch.float32, attn_implementation="eager").eval()
    base_lm_head = base.lm_head.weight.detach().clone()

    heads_a = case_a_heads(base_lm_head)
    batches = make_batches(base, heads_a)
    for b in batches:
        assert np.array_equal(run_packed_hidden(base2, b["tokens"], b["seq_lens"]), b["hidden"])
        for i in range(K):
            assert (b["targets"][i] != IGNORE).sum() > 0
    bt = {}
    for j, b in enumerate(batches):
        bt[f"tokens.{j}"] = b["tokens"]
        bt[f"seq_lens.{j}"] = b["seq_lens"]
        bt[f"loss_mask.{j}"] = b["loss_mask"]
        bt[f"hidden.{j}"] = b["hidden"]
        for i in range(K):
            bt[f"target.{j}.{i}"] = b["targets"][i].astype(np.int32)
    save_file(bt, str(OUT / "batches.safetensors"))

    # ---- case A / A2
    heads_a, a, a_info = case_a(heads_a, batches[0])
    save_file(a, str(OUT / "case_a.safetensors"))
    params_a = state_np(heads_a)
    _, a2 = case_a2(heads_a, base_lm_head, batches[0])
    a2 = {k: v for k, v in a2.items() if keep(k, 2)}
    save_file(a2, str(OUT / "case_a2.safetensors"))

    # ---- case B: 3 steps, one batch per step
    total_b = 3
    warm_b = math.ceil(WARMUP_RATIO * total_b)
    rb = train_manual(base_lm_head, batches, 1, total_b, warm_b)
    b = {"lr": np.asarray(rb["lr"], np.float32), "grad_norm": np.asarray(rb["grad_norm"], np.float32),
         "step_loss": np.asarray(rb["step_loss"], np.float32)}
    for k in head_keys(K, 1):
        if "linear" in k:                  # the initial lm_heads are the base lm_head.weight: not stored
            b[f"init.{k}"] = rb["init"][k]
    assert all(np.array_equal(rb["steps"][0][k], rb["init"][k]) for k in rb["init"])   # lr 0 at step 0
    for k in head_keys(K, 1):
        b[f"step{total_b - 1}.{k}"] = rb["steps"][-1][k]
        if "linear" in k:
            for s in range(total_b):
                b[f"gin{s}.{k}"] = rb["gin"][s][k]
            b[f"exp_avg.{k}"] = rb["moments"][f"exp_avg.{k}"]
            b[f"exp_avg_sq.{k}"] = rb["moments"][f"exp_avg_sq.{k}"]
    save_file(b, str(OUT / "case_b.safetensors"))

    # ---- case C: grad accumulation 2 (batches 0, 1), one step, no warm-up (else lr would be 0)
    rc = train_manual(base_lm_head, batches[:2], 2, 1, 0)
    c = {"lr": np.asarray(rc["lr"], np.float32), "grad_norm": np.asarray(rc["grad_norm"], np.float32),
         "step_loss": np.asarray(rc["step_loss"], np.float32)}
    for k in head_keys(K, 1):
        if keep(k, 1):
            c[f"step0.{k}"] = rc["steps"][0][k]
        if "linear" in k:
            c[f"gin0.{k}"] = rc["gin"][0][k]
    save_file(c, str(OUT / "case_c.safetensors"))

    # ---- replay the optimizer from the stored gradients (checks the README's description of clip + AdamW)
    lin = [k for k in head_keys(K, 1) if "linear" in k]
    pb_, mb_, vb_ = replay_adamw({k: b[f"init.{k}"] for k in lin}, [{k: b[f"gin{s}.{k}"] for k in lin}
                                 for s in range(total_b)], rb["lr"], rb["grad_norm"])
    pc_, _, _ = replay_adamw({k: b[f"init.{k}"] for k in lin}, [{k: c[f"gin0.{k}"] for k in lin}], rc["lr"],
                             rc["grad_norm"])
    replay = max(rel_err({k: pb_[k] for k in lin}, {k: b[f"step2.{k}"] for k in lin})[0],
                 rel_err({k: mb_[k] for k in lin}, {k: b[f"exp_avg.{k}"] for k in lin})[0],
                 rel_err({k: vb_[k] for k in lin}, {k: b[f"exp_avg_sq.{k}"] for k in lin})[0],
                 rel_err({k: pc_[k] for k in lin}, {k: c[f"step0.{k}"] for k in lin})[0])

    # ---- cross-check the hand-written loop against transformers.Trainer
    tb, logs_b = train_with_hf_trainer(base_lm_head, batches, 1, total_b, WARMUP_RATIO)
    tc, logs_c = train_with_hf_trainer(base_lm_head, batches[:2], 2, 1, 0)
    err_b = compare_states(tb, rb["steps"][-1])
    err_c = compare_states(tc, rc["steps"][-1])
    tr_norms = [h["grad_norm"] for h in logs_b]
    tr_lrs = [h["learning_rate"] for h in logs_b]

    # ---- exports (case A params)
    write_export_ref(params_a, K, 1, H, V, "tests/fixtures/medusa/base")
    write_export_vllm(params_a, K, 1, H, V)
    check_exports(a, batches[0], H, V)
    write_case_targets()

    # ---- conditioning: the same computations in float64 (from the same fp32 inputs); the distance of the fp32
    # reference to exact arithmetic is about what an fp32 re-implementation with another summation order sees.
    h64 = copy.deepcopy(heads_a).double()
    h64.zero_grad()
    _, a64, _ = case_a(h64, batches[0])
    _, a2_64 = case_a2(h64, base_lm_head, batches[0], torch.float64)
    rb64 = train_manual(base_lm_head, batches, 1, total_b, warm_b, torch.float64)
    rc64 = train_manual(base_lm_head, batches[:2], 2, 1, 0, torch.float64)
    ref64 = {"case_a": a64, "case_a2": a2_64, "case_b": {}, "case_c": {}}
    for k in head_keys(K, 1):
        ref64["case_b"][f"step2.{k}"] = rb64["steps"][-1][k]
        ref64["case_c"][f"step0.{k}"] = rc64["steps"][-1][k]
        ref64["case_c"][f"gin0.{k}"] = rc64["gin"][0][k]
        ref64["case_b"][f"init.{k}"] = rb64["init"][k]
        for s in range(total_b):
            ref64["case_b"][f"gin{s}.{k}"] = rb64["gin"][s][k]
    ref64["case_b"].update(rb64["moments"])
    for name, lst, r64 in (("case_b", rb["grad_norm"], rb64["grad_norm"]), ("case_c", rc["grad_norm"],
                                                                           rc64["grad_norm"])):
        ref64[name]["grad_norm"] = np.asarray(r64)
        ref64[name]["step_loss"] = np.asarray((rb64 if name == "case_b" else rc64)["step_loss"])

    # ---- report
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print("case A: loss", a["loss"][0], "per head", [a[f"loss.{i}"][0] for i in range(K)],
          "valid", [int(a[f"valid.{i}"][0]) for i in range(K)], "hits", [a[f"hits.{i}"].tolist() for i in range(K)])
    print("case A: top-k decision margins (min logit gap deciding a hit, per head):",
          ", ".join(f"{v:.3g}" for v in a_info.values()))
    print("per key group: max |value|, and fp32 vs fp64 max|d|/max|ref| (worst tensor of the group)")
    for name, d in (("batches", bt), ("case_a", a), ("case_a2", a2), ("case_b", b), ("case_c", c)):
        groups = {}
        for k, v in d.items():
            if v.dtype != np.float32:
                continue
            g = re.sub(r"(^|\.)(\d+)(?=\.|$)", r"\1*", k, count=1)
            e = None
            if k in ref64.get(name, {}):
                r = ref64[name][k].astype(np.float64).reshape(v.shape)
                e = float(np.abs(v - r).max() / max(1e-300, np.abs(r).max()))
            amax, emax = groups.get(g, (0.0, None))
            groups[g] = (max(amax, float(np.abs(v).max())),
                         e if emax is None else (emax if e is None else max(e, emax)))
        for g, (amax, e) in groups.items():
            print(f"  {name:8s} {g:28s} max|v| {amax:9.4g}   " + ("" if e is None else f"fp64 rel {e:.2g}"))
    print("case A2: loss", a2["loss"][0])
    print("case B: lr", rb["lr"], "grad_norm", rb["grad_norm"], "step_loss", rb["step_loss"])
    print("case B: trainer lr (logged after the step)", tr_lrs, "trainer grad_norm", tr_norms)
    print("case C: lr", rc["lr"], "grad_norm", rc["grad_norm"], "step_loss", rc["step_loss"])
    print(f"Trainer vs hand loop (max rel err per tensor): B {err_b:.3g}, C {err_c:.3g}")
    print(f"numpy fp32 clip+AdamW replay from gin vs torch (params, moments; per tensor): {replay:.3g}")
    assert replay < 1e-6, replay
    assert err_b < 1e-6 and err_c < 1e-6, (err_b, err_c)
    assert np.allclose(tr_norms, rb["grad_norm"], rtol=1e-6), (tr_norms, rb["grad_norm"])
    assert any(n > MAX_GRAD_NORM for n in rb["grad_norm"]), "clipping never triggers"
    assert min(a_info.values()) > 1e-4, a_info
    for name, d in [("case_a", a), ("case_a2", a2), ("case_b", b), ("case_c", c), ("batches", bt)]:
        assert all(v.dtype in (np.float32, np.int32) for v in d.values()), name
    total = 0
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            p.chmod(0o644)
            total += p.stat().st_size
            print(f"  {p.relative_to(OUT)}: {p.stat().st_size} bytes")
    print(f"total {total} bytes")


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["--targets"]:
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        write_case_targets()
    else:
        main()
