"""Reference acceptance decisions for tests/test_decode.c, from the reference Medusa code (FasterDecoding/Medusa
medusa/model/utils.py, carried here because the PyPI medusa-llm release predates it):

- "cases": evaluate_posterior (greedy, and typical acceptance in its default fast mode) on random logits and
  candidate paths.
- "steps": a whole step on the tree "tree" (whose paths have different lengths, so retrieve_indices is padded):
  generate_candidates in the fast mode that medusa_generate (and so the reference CLI) runs by default, where the
  root token is the argmax of the base model's logits at every temperature; the tree's logits gathered by
  retrieve_indices as tree_decoding gathers them; evaluate_posterior. Past a shorter path's leaf the reference reads
  token 0 (the zero generate_candidates appends) against the tree's last row (index -1), so it can accept tokens
  past a leaf: "ref_best"/"ref_accept_length" are its own result. medusa-c stops a path at its leaf: "best" and
  "accept_length" are evaluate_posterior's result when every padded entry names an extra token whose logit is -inf
  in every row (probability 0, never the argmax), which never alters a real entry's argmax, probability or entropy.
  "ref_reads_padding" marks the steps where some path's reference acceptance runs past its leaf; elsewhere both
  results are equal (asserted here).

Run: .venv/bin/python tests/gen/gen_acceptance.py"""
import json
import os

import torch

from gen_trees import TOPK, generate_medusa_buffers


def evaluate_posterior(logits, candidates, temperature, posterior_threshold=0.3, posterior_alpha=0.09):
    if temperature == 0:
        posterior_mask = (candidates[:, 1:] == torch.argmax(logits[:, :-1], dim=-1)).int()
        candidates_accept_length = (torch.cumprod(posterior_mask, dim=1)).sum(dim=1)
        accept_length = candidates_accept_length.max()
        if accept_length == 0:
            best_candidate = torch.tensor(0, dtype=torch.long)
        else:
            best_candidate = torch.argmax(candidates_accept_length).to(torch.long)
        return best_candidate, accept_length
    posterior_prob = torch.softmax(logits[:, :-1] / temperature, dim=-1)
    candidates_prob = torch.gather(posterior_prob, dim=-1, index=candidates[:, 1:].unsqueeze(-1)).squeeze(-1)
    posterior_entropy = -torch.sum(posterior_prob * torch.log(posterior_prob + 1e-5), dim=-1)
    threshold = torch.minimum(torch.ones_like(posterior_entropy) * posterior_threshold,
                              torch.exp(-posterior_entropy) * posterior_alpha)
    posterior_mask = candidates_prob > threshold
    candidates_accept_length = (torch.cumprod(posterior_mask, dim=1)).sum(dim=1)
    accept_length = candidates_accept_length.max()
    if accept_length == 0:
        best_candidate = torch.tensor(0, dtype=torch.long)
    else:
        best_candidates = torch.where(candidates_accept_length == accept_length)[0]
        likelihood = torch.sum(torch.log(candidates_prob[best_candidates, :accept_length]), dim=-1)
        best_candidate = best_candidates[torch.argmax(likelihood)]
    return best_candidate, accept_length


def generate_candidates(medusa_logits, logits, tree_indices, retrieve_indices):
    """The reference generate_candidates in its fast mode (temperature == 0 or fast: the root is the argmax)."""
    candidates_logit = torch.argmax(logits[:, -1]).unsqueeze(0)
    candidates_medusa_logits = torch.topk(medusa_logits[:, 0, -1], TOPK, dim=-1).indices
    candidates = torch.cat([candidates_logit, candidates_medusa_logits.view(-1)], dim=-1)
    tree_candidates = candidates[tree_indices]
    tree_candidates_ext = torch.cat([tree_candidates, torch.zeros((1), dtype=torch.long, device=tree_candidates.device)],
                                    dim=0)
    cart_candidates = tree_candidates_ext[retrieve_indices]
    tree_candidates = tree_candidates.unsqueeze(0)
    return cart_candidates, tree_candidates


EPSILON, ALPHA = 0.09, 0.3
TREE = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0]]


def distinct_rows(shape, scale, g):
    """Random logits rounded to 3 decimals (short in JSON; the reference runs on the rounded values), drawn again
    until no row has two equal values, so that argmax and topk have no ties to break."""
    x = torch.round(torch.randn(shape, generator=g) * scale * 1000) / 1000
    rows = x.view(-1, shape[-1])
    for r in range(rows.shape[0]):
        while len(set(rows[r].tolist())) < shape[-1]:
            rows[r] = torch.round(torch.randn(shape[-1], generator=g) * scale * 1000) / 1000
    return x


def short(x):
    return [round(v, 3) for v in x.flatten().tolist()]


def path_cases(g):
    cases = []
    V, P, D = 16, 5, 4
    for i in range(150):
        # peaked logits so that acceptance happens at varied lengths
        logits = torch.randn(P, D, V, generator=g) * (1 + 4 * torch.rand(1, generator=g))
        logits = torch.round(logits * 1000) / 1000
        candidates = torch.randint(0, V, (P, D), generator=g)
        # make some candidates the argmax or likely tokens so paths get accepted
        top = torch.argsort(logits, dim=-1, descending=True)
        for p in range(P):
            for j in range(1, D):
                r = torch.rand(1, generator=g).item()
                if r < 0.45:
                    candidates[p, j] = top[p, j - 1, 0]
                elif r < 0.6:
                    candidates[p, j] = top[p, j - 1, 1]
        temperature = [0.0, 0.7, 1.0][i % 3]
        best, length = evaluate_posterior(logits, candidates, temperature, EPSILON, ALPHA)
        cases.append({"temperature": temperature, "logits": short(logits),
                      "candidates": candidates.tolist(), "best": int(best), "accept_length": int(length)})
    return {"V": V, "paths": P, "depth": D, "cases": cases}


def step_cases(g):
    V = 16
    b = generate_medusa_buffers(TREE)
    tree_indices, retrieve = b["tree_indices"], b["retrieve_indices"]
    N, (P, D), K = len(tree_indices), retrieve.shape, max(len(p) for p in TREE)
    path_len = (retrieve >= 0).sum(dim=1)  # nodes on each path, the root included
    steps, reading = [], 0
    for i in range(90):
        temperature = [0.0, 0.7, 1.0][i % 3]
        scale = 1 + 3 * torch.rand(1, generator=g).item()
        base_logits = distinct_rows((1, 1, V), scale, g)
        medusa_logits = distinct_rows((K, 1, 1, V), scale, g)
        cart, tree_cand = generate_candidates(medusa_logits, base_logits, tree_indices, retrieve)
        tree_cand = tree_cand[0]
        # each node's row favours one of its children (so paths get accepted) and at times token 0, which the
        # reference reads past a leaf
        tree_logits = distinct_rows((N, V), scale, g)
        children = {}
        for p in range(P):
            for j in range(path_len[p] - 1):
                children.setdefault(int(retrieve[p, j]), set()).add(int(retrieve[p, j + 1]))
        for node in range(N):
            r = torch.rand(1, generator=g).item()
            kids = sorted(children.get(node, ()))
            if kids and r < 0.6:
                kid = kids[int(torch.randint(len(kids), (1,), generator=g))]
                tree_logits[node, tree_cand[kid]] = tree_logits[node].max() + 0.5 + torch.rand(1, generator=g).item()
            elif r < 0.85 and tree_cand[node] != 0:
                tree_logits[node, 0] = tree_logits[node].max() + 0.5 + torch.rand(1, generator=g).item()
            tree_logits[node] = torch.round(tree_logits[node] * 1000) / 1000
        assert all(len(set(row.tolist())) == V for row in tree_logits)
        logits = tree_logits[retrieve]  # tree_decoding: tree_logits[0, retrieve_indices]
        ref_best, ref_len = evaluate_posterior(logits, cart, temperature, EPSILON, ALPHA)
        # medusa-c's rule: a padded entry names token V, whose logit is -inf in every row
        masked_logits = torch.cat([logits, torch.full((P, D, 1), float("-inf"))], dim=-1)
        masked_cart = torch.where(retrieve >= 0, cart, torch.full_like(cart, V))
        best, length = evaluate_posterior(masked_logits, masked_cart, temperature, EPSILON, ALPHA)
        per_path = [int(evaluate_posterior(logits[p:p + 1], cart[p:p + 1], temperature, EPSILON, ALPHA)[1])
                    for p in range(P)]
        reads_padding = any(per_path[p] >= path_len[p] for p in range(P))
        if not reads_padding:
            assert (int(best), int(length)) == (int(ref_best), int(ref_len))
        reading += reads_padding
        steps.append({"temperature": temperature, "base_logits": short(base_logits),
                      "medusa_logits": short(medusa_logits), "tree_logits": short(tree_logits),
                      "tree_candidates": tree_cand.tolist(), "cart_candidates": cart.tolist(),
                      "ref_best": int(ref_best), "ref_accept_length": int(ref_len),
                      "best": int(best), "accept_length": int(length), "ref_reads_padding": bool(reads_padding)})
    print(len(steps), "steps,", reading, "where the reference accepts past a path's leaf")
    return {"tree": TREE, "V": V, "heads": K, "steps": steps}


def main():
    g = torch.Generator().manual_seed(7)
    fixture = {"epsilon": EPSILON, "alpha": ALPHA}
    fixture.update(path_cases(g))
    fixture["step_cases"] = step_cases(g)
    out = os.path.join(os.path.dirname(__file__), "..", "fixtures", "acceptance.json")
    with open(out, "w") as f:
        json.dump(fixture, f)
    print("wrote", out, len(fixture["cases"]), "cases,", os.path.getsize(out), "bytes")


if __name__ == "__main__":
    main()
