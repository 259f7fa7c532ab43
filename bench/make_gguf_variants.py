#!/usr/bin/env python3
"""Q8_0 and F16 copies of a quantised GGUF (the demo SmolLM2-135M-Instruct.Q4_1.gguf), for speed benchmarks.

Every 2-D weight is dequantised (Q4_1, or the Q8_0 token embedding) and requantised to Q8_0, or stored as F16;
1-D tensors (the RMS norm vectors) stay F32. The values are the Q4_1 model's, rounded once more: these files
measure speed, not quality. All key/value metadata is copied with its own types (the tokenizer's string arrays,
the INT32 token types, the chat template, ...); only general.file_type is set to the new file type. Tensor names,
shapes and order are the source's.

Each output is read back and checked (same keys and values, same tensors, the values within the format's rounding
of the source's), then loaded in llama-cpp-python, which must produce text (skip with --no-llama-check).

    .venv/bin/python bench/make_gguf_variants.py [--src cache/models/SmolLM2-135M-Instruct.Q4_1.gguf] [OUT_DIR]

writes OUT_DIR/SmolLM2-135M-Instruct.Q8_0.gguf and OUT_DIR/SmolLM2-135M-Instruct.F16.gguf (OUT_DIR defaults to
cache/models/ of this checkout). About 30 s on 2 cores for the 135M model.
"""
import argparse
import os
import re
import sys
import time

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SRC = os.path.join(ROOT, "cache", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

# target name -> (tensor type of the 2-D weights, general.file_type)
VARIANTS = {
    "Q8_0": (QT.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "F16": (QT.F16, gguf.LlamaFileType.MOSTLY_F16),
}


def out_name(src, variant):
    base = os.path.basename(src)
    stem = re.sub(r"\.(Q\d_K(_[SML])?|Q\d_\d|IQ\d\w*|F16|BF16|F32)$", "", base[: -len(".gguf")], flags=re.I)
    return f"{stem}.{variant}.gguf"


def field_value(field):
    """(value, type, sub_type) of a reader field, as GGUFWriter.add_key_value takes them."""
    vtype = field.types[0]
    sub = field.types[-1] if vtype == VT.ARRAY else None
    if vtype == VT.ARRAY and len(field.types) > 2:
        raise SystemExit(f"{field.name}: nested arrays are not supported")
    return field.contents(), vtype, sub


def raw_strings(field):
    """the raw bytes of a string or string-array field (to check the copy byte for byte)"""
    if field.types[0] == VT.STRING:
        return [bytes(field.parts[field.data[0]])]
    return [bytes(field.parts[i]) for i in field.data]


def convert(src, dst, variant):
    qtype, ftype = VARIANTS[variant]
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)  # writes general.architecture itself
    have_ftype = False
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # the header's virtual fields, and the key the writer adds
        val, vtype, sub = field_value(field)
        if name == "general.file_type":
            val, have_ftype = int(ftype), True
        w.add_key_value(name, val, vtype, sub_type=sub)
    if not have_ftype:
        w.add_key_value("general.file_type", int(ftype), VT.UINT32)
    if "general.alignment" in r.fields:
        w.data_alignment = int(r.fields["general.alignment"].contents())
    for t in r.tensors:
        if len(t.shape) == 1:  # the norm vectors (and any other 1-D tensor) as they are
            w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
            continue
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)  # numpy order: (rows, cols)
        if qtype == QT.F16:
            w.add_tensor(t.name, x.astype(np.float16))
        elif qtype == QT.F32:
            w.add_tensor(t.name, x)
        else:
            w.add_tensor(t.name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def check(src, dst, variant):
    """The copy has the source's keys (types and values, strings byte for byte) but general.file_type, the
    source's tensors in order with their shapes, 2-D ones in the new type with values within its rounding."""
    qtype, ftype = VARIANTS[variant]
    a, b = gguf.GGUFReader(src), gguf.GGUFReader(dst)
    ka = [k for k in a.fields if not k.startswith("GGUF.")]
    kb = [k for k in b.fields if not k.startswith("GGUF.")]
    if "general.file_type" not in ka:
        ka.append("general.file_type")
    if sorted(ka) != sorted(kb):
        raise SystemExit(f"{dst}: keys differ: {sorted(set(ka) ^ set(kb))}")
    for k in ka:
        fb = b.fields[k]
        if k == "general.file_type":
            if fb.types != [VT.UINT32] or fb.contents() != int(ftype):
                raise SystemExit(f"{dst}: general.file_type {fb.contents()} ({fb.types}), expected {int(ftype)}")
            continue
        fa = a.fields[k]
        if fa.types != fb.types:
            raise SystemExit(f"{dst}: {k}: types {fb.types} != source's {fa.types}")
        if VT.STRING in fa.types:
            if raw_strings(fa) != raw_strings(fb):
                raise SystemExit(f"{dst}: {k}: strings differ from the source's")
        elif fa.contents() != fb.contents():
            raise SystemExit(f"{dst}: {k}: value differs from the source's")
    if [t.name for t in a.tensors] != [t.name for t in b.tensors]:
        raise SystemExit(f"{dst}: tensor names or order differ")
    worst = 0.0
    for ta, tb in zip(a.tensors, b.tensors):
        if list(ta.shape) != list(tb.shape):
            raise SystemExit(f"{dst}: {ta.name}: shape {list(tb.shape)} != {list(ta.shape)}")
        want = ta.tensor_type if len(ta.shape) == 1 else qtype
        if tb.tensor_type != want:
            raise SystemExit(f"{dst}: {ta.name}: type {tb.tensor_type.name}, expected {want.name}")
        xa = gguf.quants.dequantize(ta.data, ta.tensor_type).astype(np.float32)
        xb = gguf.quants.dequantize(tb.data, tb.tensor_type).astype(np.float32)
        if len(ta.shape) == 1:
            if not np.array_equal(xa, xb):
                raise SystemExit(f"{dst}: {ta.name}: a 1-D tensor changed")
            continue
        # Q8_0: |error| <= half a step of the block's scale (max|x|/127), F16: relative 2^-11
        scale = np.abs(xa).max()
        err = float(np.abs(xa - xb).max() / (scale if scale > 0 else 1))
        worst = max(worst, err)
        if err > (1 / 254 + 1e-3 if qtype == QT.Q8_0 else 1e-3):
            raise SystemExit(f"{dst}: {ta.name}: max error {err:.3g} of the tensor's largest |value|")
    return len(ka), len(a.tensors), worst


def llama_check(path, prompt):
    """Loads the file in llama-cpp-python and decodes a few greedy tokens."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=2, n_threads_batch=2, verbose=False)
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0.0, top_k=1, repeat_penalty=1.0
    )
    text = out["choices"][0]["message"]["content"]
    del llm
    if not text.strip():
        raise SystemExit(f"{path}: llama.cpp produced no text")
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", nargs="?", default=os.path.join(ROOT, "cache", "models"))
    ap.add_argument("--src", default=DEFAULT_SRC, help="the quantised GGUF to convert (default: %(default)s)")
    ap.add_argument("--variants", default="Q8_0,F16", help="comma-separated: Q8_0, F16 (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="rewrite outputs that exist")
    ap.add_argument("--no-llama-check", action="store_true", help="do not load the outputs in llama-cpp-python")
    ap.add_argument("--prompt", default="What is the capital of France?", help="the llama.cpp check's prompt")
    o = ap.parse_args()
    os.makedirs(o.out_dir, exist_ok=True)
    for variant in o.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
        dst = os.path.join(o.out_dir, out_name(o.src, variant))
        if os.path.exists(dst) and not o.force:
            print(f"{dst}: exists (--force rewrites it)")
        else:
            t0 = time.time()
            tmp = dst + ".tmp"
            convert(o.src, tmp, variant)
            os.replace(tmp, dst)
            print(f"{dst}: written in {time.time() - t0:.1f} s, {os.path.getsize(dst) / 2**20:.1f} MiB")
        n_keys, n_tensors, worst = check(o.src, dst, variant)
        print(f"  checked: {n_keys} keys as the source's (general.file_type = {int(VARIANTS[variant][1])}), "
              f"{n_tensors} tensors in order, largest error {worst:.2g} of a tensor's largest |value|")
        if not o.no_llama_check:
            print(f"  llama.cpp: {llama_check(dst, o.prompt)!r}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
