#!/usr/bin/env python3
"""llama.cpp (llama-cpp-python) greedy decoding speed on a prompt set, measured as medusa-c measures it.

    .venv/bin/python bench/bench_llamacpp.py --model cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        [--prompts bench/prompts_sharegpt_val.json] [--threads 2] [--max-new-tokens 64] [--n-prompts 8]

The prompts are what medusa-infer --bench decodes: a JSON list of strings (or {"prompt": ...}, or ShareGPT
conversations: the first user turn), or of token-id lists used as they are. A text goes through the model's chat
template the way medusa-c renders it (data/chat_template.c): one user turn and the generation prompt; for a chatml
template (SmolLM2) the template's own default system turn comes first, no BOS:
    <|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n
    <|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n
That text is also rendered by the GGUF's Jinja template (as transformers' apply_chat_template does) and the two must
agree; it is tokenised by llama.cpp with special tokens parsed. --prompt-ids-out writes the ids, so medusa-c can be
given the very same ids (bench_llamacpp.sh does).

Decoding: greedy (the argmax of the last row's logits, ties to the lower id, as medusa-c's argmax), no repeat
penalty, no sampler chain, n_threads = n_threads_batch = --threads, n_ctx 2048; it stops after the chat template's
end-of-turn token (<|im_end|> for chatml: medusa-c's chat_stop_id) or --max-new-tokens.

Speed, "decode tok/s": medusa-c's --bench plain/s definition (infer/decoder.c decode_plain), which excludes the
prefill: the clock starts once the prompt has been evaluated, and stops after the last token is chosen; the count is
every generated token, the first one (the prompt's own argmax) included, so N tokens take N - 1 single-token
forwards plus N argmaxes. The total is the sum of tokens over the sum of those times, as --bench's total line.
"llama eval tok/s" is llama.cpp's own count for comparison: its single-token evals over its eval time
(llama_perf_context), i.e. (N - 1) / t_eval, without the argmax or Python overhead.
"""
import argparse
import ctypes
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_quiet_log = None


def load_prompts(path):
    """medusa-infer's load_prompts (infer/bench.c): texts or token-id lists"""
    if path.endswith(".txt"):
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip("\n")]
    with open(path, encoding="utf-8") as f:
        items = json.load(f)
    out = []
    for i, it in enumerate(items):
        if isinstance(it, list) and it and all(isinstance(x, int) for x in it):
            out.append([int(x) for x in it])
        elif isinstance(it, str):
            out.append(it)
        elif isinstance(it, dict) and isinstance(it.get("prompt"), str):
            out.append(it["prompt"])
        elif isinstance(it, dict) and isinstance(it.get("conversations"), list):
            user = [t.get("value") for t in it["conversations"] if t.get("from") in ("human", "user")]
            if not user:
                raise SystemExit(f"{path}: element {i} has no user turn")
            out.append(user[0])
        else:
            raise SystemExit(f"{path}: element {i} is neither a string, a prompt, a conversation nor token ids")
    return out


def chatml_default_system(jinja):
    """data/chat_template.c chatml_default_system: the literal system prompt a chatml template writes when the
    conversation has none (None when it writes none, or not as a plain literal)"""
    opener = "<|im_start|>system"
    p = jinja.find(opener) if jinja else -1
    while p >= 0:
        q = p + len(opener)
        if jinja.startswith("\n", q):
            q += 1
        elif jinja.startswith("\\n", q):
            q += 2
        else:
            p = jinja.find(opener, p + 1)
            continue
        end = jinja.find("<|im_end|>", q)
        if end > q:
            body, out, i, literal = jinja[q:end], [], 0, True
            while i < len(body) and literal:
                c = body[i]
                if c in "'\"{}":
                    literal = False
                elif c == "\\" and i + 1 < len(body):
                    i += 1
                    out.append("\n" if body[i] == "n" else body[i])
                else:
                    out.append(c)
                i += 1
            if literal:
                return "".join(out)
        p = jinja.find(opener, p + 1)
    return None


def render_medusa_c(jinja, user, system=None):
    """the generation prompt medusa-c writes for one user turn (chatml only; None for other templates)"""
    if not jinja or "<|im_start|>" not in jinja:
        return None
    if system is None:
        system = chatml_default_system(jinja)
    text = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
    return text + f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def render_jinja(jinja, user, system, bos, eos):
    """transformers' apply_chat_template(add_generation_prompt=True) with the GGUF's template"""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise ValueError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": user}]
    return env.from_string(jinja).render(messages=msgs, add_generation_prompt=True, bos_token=bos, eos_token=eos)


def gguf_string(llm, key):
    v = llm.metadata.get(key)
    return v if isinstance(v, str) else None


def prompt_ids(llm, prompts, system=None):
    """(ids per prompt, how they were made, the stop token)"""
    jinja = gguf_string(llm, "tokenizer.chat_template")
    vocab = llm.n_vocab()
    bos, eos = llm.token_bos(), llm.token_eos()
    bos_s = llm.detokenize([bos], special=True).decode("utf-8", "replace") if bos >= 0 else ""
    eos_s = llm.detokenize([eos], special=True).decode("utf-8", "replace") if eos >= 0 else ""
    # medusa-c's chat_stop_id: chatml's <|im_end|>, llama-3's <|eot_id|>, else the EOS
    stop = eos
    for end in ("<|im_end|>", "<|eot_id|>"):
        if jinja and end in jinja:
            ids = llm.tokenize(end.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                stop = ids[0]
            break
    out, how = [], "token ids as given"
    for p in prompts:
        if isinstance(p, list):
            if any(x < 0 or x >= vocab for x in p):
                raise SystemExit("a prompt's token id is out of the vocabulary")
            out.append(p)
            continue
        text = render_medusa_c(jinja, p, system)
        if text is None:
            raise SystemExit("the model's chat template is not chatml: give token-id prompts (medusa-c's own ids)")
        ref = render_jinja(jinja, p, system, bos_s, eos_s)
        if ref != text:
            raise SystemExit(f"chat template: medusa-c's rendering differs from the GGUF's Jinja template:\n"
                             f"{text!r}\nvs\n{ref!r}")
        how = "chatml as medusa-c renders it (== the GGUF's Jinja template), tokenised by llama.cpp, no BOS"
        out.append(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
    return out, how, stop


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--prompts", default=os.path.join(ROOT, "bench", "prompts_sharegpt_val.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--n-prompts", type=int, default=8, help="the first N prompts (0: all)")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--system", default=None, help="system prompt (default: the template's own, as medusa-c)")
    ap.add_argument("--prompt-ids-out", help="write the prompts' token ids here (a JSON list of id lists)")
    ap.add_argument("--tokenize-only", action="store_true", help="write --prompt-ids-out and exit")
    ap.add_argument("--outputs-out", help="write each prompt's generated ids and text here (JSON)")
    ap.add_argument("--warmup", type=int, default=0,
                    help="tokens of one throwaway generation first (default 0: medusa-c --bench has no warm-up)")
    o = ap.parse_args()

    import llama_cpp

    global _quiet_log  # llama.cpp keeps the pointer: the callback must outlive the model
    _quiet_log = llama_cpp.llama_log_callback(lambda level, text, user: None)
    llama_cpp.llama_log_set(_quiet_log, ctypes.c_void_p(0))
    t_load = time.perf_counter()
    llm = llama_cpp.Llama(model_path=o.model, n_ctx=o.ctx, n_batch=512, n_threads=o.threads,
                          n_threads_batch=o.threads, vocab_only=o.tokenize_only, verbose=False)
    t_load = time.perf_counter() - t_load
    prompts = load_prompts(o.prompts)
    if o.n_prompts > 0:
        prompts = prompts[: o.n_prompts]
    ids, how, stop = prompt_ids(llm, prompts, o.system)
    if o.prompt_ids_out:
        with open(o.prompt_ids_out, "w") as f:
            json.dump(ids, f)
    if o.tokenize_only:
        print(f"# {len(ids)} prompts, {sum(map(len, ids))} tokens ({how}) -> {o.prompt_ids_out}")
        return

    ctx, V = llm.ctx, llm.n_vocab()

    def generate(prompt, max_new):
        """medusa-c's decode_plain: prefill, then argmax / forward until the stop token or max_new"""
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t_prefill = time.perf_counter() - t0
        llama_cpp.llama_perf_context_reset(ctx)
        out = []
        t0 = time.perf_counter()
        while len(out) < max_new:
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(V,))
            nxt = int(np.argmax(logits))
            out.append(nxt)
            if nxt == stop or len(out) >= max_new or llm.n_tokens + 1 >= o.ctx:
                break
            llm.eval([nxt])
        seconds = time.perf_counter() - t0
        perf = llama_cpp.llama_perf_context(ctx)
        return out, t_prefill, seconds, perf.n_eval, perf.t_eval_ms / 1e3

    if o.warmup > 0:
        generate(ids[0], o.warmup)
    print(f"# bench_llamacpp.py: {len(ids)} prompts of {o.prompts}, model {o.model} (loaded in {t_load:.2f} s), "
          f"max {o.max_new_tokens} new tokens, {o.threads} threads, n_ctx {o.ctx}, llama-cpp-python "
          f"{llama_cpp.__version__}, greedy (argmax), stop at token {stop}, warm-up {o.warmup} tokens")
    print(f"# prompts: {how}")
    print("# decode tok/s = tokens / time from the end of the prefill to the last token chosen (medusa-c --bench "
          "plain/s); llama eval tok/s = llama_perf n_eval / t_eval (its single-token forwards only)")
    print(f"{'prompt':<6} {'in':>5} {'tokens':>7} {'prefill s':>9} {'decode s':>9} {'decode/s':>9} {'llama eval/s':>12}")
    tot_n = tot_s = tot_ev = tot_evs = tot_pre = 0.0
    outputs = []
    for p, prompt in enumerate(ids):
        if len(prompt) + o.max_new_tokens + 1 > o.ctx:
            print(f"{p:<6} skipped: {len(prompt)} prompt tokens leave no room for {o.max_new_tokens} in n_ctx {o.ctx}")
            continue
        out, t_pre, secs, n_eval, t_eval = generate(prompt, o.max_new_tokens)
        tot_n, tot_s, tot_ev, tot_evs, tot_pre = tot_n + len(out), tot_s + secs, tot_ev + n_eval, tot_evs + t_eval, \
            tot_pre + t_pre
        print(f"{p:<6} {len(prompt):5d} {len(out):7d} {t_pre:9.3f} {secs:9.3f} {len(out) / secs:9.1f} "
              f"{(n_eval / t_eval if t_eval > 0 else 0):12.1f}")
        sys.stdout.flush()
        reply = [t for t in out if t != stop]
        text = llm.detokenize(reply).decode("utf-8", "replace")
        # the length of the text after each token (to count the tokens two replies agree on)
        upto = [len(llm.detokenize(reply[: k + 1]).decode("utf-8", "replace")) for k in range(len(reply))]
        outputs.append({"prompt": p, "prompt_ids": prompt, "ids": out, "text": text, "prefix_chars": upto})
    if o.outputs_out:
        with open(o.outputs_out, "w") as f:
            json.dump(outputs, f)
    print(f"total  {int(tot_n)} tokens in {tot_s:.3f} s decode ({tot_pre:.3f} s prefill, excluded): "
          f"decode {tot_n / tot_s:.2f} tok/s, llama eval {tot_ev / tot_evs if tot_evs > 0 else 0:.2f} tok/s")


if __name__ == "__main__":
    main()
