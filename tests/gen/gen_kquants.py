#!/usr/bin/env python3
"""Golden fixture for the GGUF K-quants and the 5-bit formats (run by hand from the repository root, never in CI):

    .venv/bin/python tests/gen/gen_kquants.py

writes tests/fixtures/kquants/kquants.gguf (one tensor per type: Q4_K, Q5_K, Q6_K, Q5_0, Q5_1, each 4 rows x 512
elements of random block bytes with finite f16 scales) and kquants_ref.safetensors (each tensor as the gguf package's
dequantize gives it, fp32). The C reader must give the same floats bit for bit.
"""

from pathlib import Path

import numpy as np
import gguf
from gguf.quants import dequantize
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "kquants"
ROWS, COLS = 4, 512
TYPES = {  # block bytes, offsets of its f16 scale fields
    "Q4_K": (gguf.GGMLQuantizationType.Q4_K, 144, (0, 2)),
    "Q5_K": (gguf.GGMLQuantizationType.Q5_K, 176, (0, 2)),
    "Q6_K": (gguf.GGMLQuantizationType.Q6_K, 210, (208,)),
    "Q5_0": (gguf.GGMLQuantizationType.Q5_0, 22, (0,)),  # the 32-element 5-bit formats
    "Q5_1": (gguf.GGMLQuantizationType.Q5_1, 24, (0, 2)),
}


def random_blocks(rng, n_blocks, block_bytes, f16_offsets):
    b = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in f16_offsets:  # finite scales of either sign, as a quantiser writes them
        b[:, off:off + 2] = rng.uniform(-0.05, 0.05, n_blocks).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return b


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    w = gguf.GGUFWriter(str(OUT / "kquants.gguf"), "llama")
    ref = {}
    for name, (qtype, block_bytes, f16_offsets) in TYPES.items():
        block_elems, type_size = gguf.GGML_QUANT_SIZES[qtype]
        assert type_size == block_bytes
        blocks = random_blocks(rng, ROWS * COLS // block_elems, block_bytes, f16_offsets).reshape(ROWS, -1)
        w.add_tensor(name, blocks, raw_dtype=qtype)
        ref[name] = dequantize(blocks, qtype).astype(np.float32).reshape(ROWS, COLS)
        assert np.isfinite(ref[name]).all()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(ref, str(OUT / "kquants_ref.safetensors"), metadata={"gguf": gguf.__version__ if hasattr(gguf, "__version__") else "?"})
    print({k: (float(v.min()), float(v.max())) for k, v in ref.items()})


if __name__ == "__main__":
    main()
