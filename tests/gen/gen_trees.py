"""Tree buffers from the reference Medusa implementation, for tests/test_tree.c.

generate_medusa_buffers below is the reference's function (FasterDecoding/Medusa, medusa/model/utils.py),
kept verbatim apart from dropping the device move; the PyPI medusa-llm 0.1 release predates sparse trees,
so the function is carried here. Run: .venv/bin/python tests/gen/gen_trees.py
"""
import json
import os

import torch

TOPK = 10


def pad_path(path, length, pad_value=-2):
    return path + [pad_value] * (length - len(path))


def generate_medusa_buffers(medusa_choices):
    sorted_medusa_choices = sorted(medusa_choices, key=lambda x: (len(x), x))
    medusa_len = len(sorted_medusa_choices) + 1
    depth_counts = []
    prev_depth = 0
    for path in sorted_medusa_choices:
        depth = len(path)
        if depth != prev_depth:
            depth_counts.append(0)
        depth_counts[depth - 1] += 1
        prev_depth = depth
    medusa_attn_mask = torch.eye(medusa_len, medusa_len)
    medusa_attn_mask[:, 0] = 1
    start = 0
    for i in range(len(depth_counts)):
        for j in range(depth_counts[i]):
            cur_medusa_choice = sorted_medusa_choices[start + j]
            if len(cur_medusa_choice) == 1:
                continue
            ancestor_idx = []
            for c in range(len(cur_medusa_choice) - 1):
                ancestor_idx.append(sorted_medusa_choices.index(cur_medusa_choice[:c + 1]) + 1)
            medusa_attn_mask[j + start + 1, ancestor_idx] = 1
        start += depth_counts[i]
    medusa_tree_indices = torch.zeros(medusa_len, dtype=torch.long)
    start = 0
    for i in range(len(depth_counts)):
        for j in range(depth_counts[i]):
            cur_medusa_choice = sorted_medusa_choices[start + j]
            medusa_tree_indices[start + j + 1] = cur_medusa_choice[-1] + TOPK * i + 1
        start += depth_counts[i]
    medusa_position_ids = torch.zeros(medusa_len, dtype=torch.long)
    start = 0
    for i in range(len(depth_counts)):
        medusa_position_ids[start + 1: start + depth_counts[i] + 1] = i + 1
        start += depth_counts[i]
    retrieve_indices_nest = []
    retrieve_paths = []
    for i in range(len(sorted_medusa_choices)):
        cur_medusa_choice = sorted_medusa_choices[-i - 1]
        retrieve_indice = []
        if cur_medusa_choice in retrieve_paths:
            continue
        for c in range(len(cur_medusa_choice)):
            retrieve_indice.append(sorted_medusa_choices.index(cur_medusa_choice[:c + 1]))
            retrieve_paths.append(cur_medusa_choice[:c + 1])
        retrieve_indices_nest.append(retrieve_indice)
    max_length = max([len(x) for x in retrieve_indices_nest])
    retrieve_indices = [pad_path(path, max_length) for path in retrieve_indices_nest]
    retrieve_indices = torch.tensor(retrieve_indices, dtype=torch.long) + 1
    retrieve_indices = torch.cat([torch.zeros((retrieve_indices.shape[0], 1), dtype=torch.long), retrieve_indices], dim=1)
    return {
        "medusa_attn_mask": medusa_attn_mask,
        "tree_indices": medusa_tree_indices,
        "medusa_position_ids": medusa_position_ids,
        "retrieve_indices": retrieve_indices,
    }


def main():
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    out_dir = os.path.join(root, "tests", "fixtures", "trees")
    os.makedirs(out_dir, exist_ok=True)
    for name in ["mc_sim_7b_63", "vicuna_7b_stage2", "small_8", "chain_4"]:
        choices = json.load(open(os.path.join(root, "configs", "trees", name + ".json")))
        b = generate_medusa_buffers(choices)
        out = {
            "tree": name,
            "mask": b["medusa_attn_mask"].to(torch.int64).tolist(),
            "tree_indices": b["tree_indices"].tolist(),
            "position_ids": b["medusa_position_ids"].tolist(),
            "retrieve_indices": b["retrieve_indices"].tolist(),
        }
        with open(os.path.join(out_dir, name + ".buffers.json"), "w") as f:
            json.dump(out, f)
        print(name, "nodes", len(out["tree_indices"]), "leaves", len(out["retrieve_indices"]))


if __name__ == "__main__":
    main()
