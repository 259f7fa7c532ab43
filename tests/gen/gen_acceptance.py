"""Reference acceptance decisions for tests/test_decode.c: the reference Medusa evaluate_posterior (greedy,
and typical acceptance in its default fast mode; FasterDecoding/Medusa medusa/model/utils.py, carried
here because the PyPI medusa-llm release predates it) on random logits and candidate paths.
Run: .venv/bin/python tests/gen/gen_acceptance.py"""
import json
import os

import torch


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


def main():
    g = torch.Generator().manual_seed(7)
    cases = []
    V, P, D = 16, 5, 4
    for i in range(150):
        # peaked logits so that acceptance happens at varied lengths
        logits = torch.randn(P, D, V, generator=g) * (1 + 4 * torch.rand(1, generator=g))
        logits = torch.round(logits * 1000) / 1000  # short in JSON; the reference runs on the rounded values
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
        best, length = evaluate_posterior(logits, candidates, temperature, 0.09, 0.3)
        cases.append({"temperature": temperature, "logits": [round(x, 3) for x in logits.flatten().tolist()], "candidates": candidates.tolist(),
                      "best": int(best), "accept_length": int(length)})
    out = os.path.join(os.path.dirname(__file__), "..", "fixtures", "acceptance.json")
    with open(out, "w") as f:
        json.dump({"epsilon": 0.09, "alpha": 0.3, "V": V, "paths": P, "depth": D, "cases": cases}, f)
    print("wrote", out, len(cases), "cases")


if __name__ == "__main__":
    main()
