/* medusa-distill: self-distillation data for Medusa heads (infer/distill.c). */
#include <stdlib.h>

#include "../common/args.h"
#include "../common/common.h"
#include "../common/dist.h"
#include "distill.h"

static const char USAGE[] =
    "usage: medusa-distill --model PATH --input SHAREGPT.json[l] --out OUT.jsonl [options]\n"
    "\n"
    "Regenerates every assistant turn of a ShareGPT file with the base model itself, turn by turn (each later\n"
    "turn sees the regenerated earlier ones), so that Medusa heads learn what the model writes (Medusa-2's\n"
    "self-distillation). User and system turns and conversation ids are kept; OUT is ShareGPT (JSON lines, or\n"
    "a JSON list for a .json name) for medusa-data. Many conversations are generated at once (--batch), one\n"
    "token each per forward pass. Finished conversations are kept in OUT.partial as they end: a stopped run\n"
    "continues where it was when run again with the same settings; OUT appears whole at the end.\n"
    "Under mpirun -np N the ranks share the conversations (i to rank i % N), each in its own OUT.partial file;\n"
    "rank 0 writes OUT, the same file as one process writes.";

int main(int argc, char **argv) {
    DistillOptions o;
    distill_options_defaults(&o);
    double limit = 0, seed = 0, stop_after = 0;
    ArgSpec specs[] = {
        {"model", ARG_STR, &o.model, "base model: Hugging Face directory or .gguf file"},
        {"input", ARG_STR, &o.input, "ShareGPT conversations (.json list or .jsonl)"},
        {"out", ARG_STR, &o.out, "output file (.jsonl, or .json for a JSON list)"},
        {"limit", ARG_DOUBLE, &limit, "the first N usable conversations of the input (0 = all)"},
        {"max-new-tokens", ARG_INT, &o.max_new_tokens, "most tokens per reply"},
        {"max-len", ARG_INT, &o.max_len,
         "most tokens of a conversation, prompts and replies (medusa-data's --max-len)"},
        {"temperature", ARG_FLOAT, &o.temperature, "0 = greedy (default); > 0 samples"},
        {"top-p", ARG_FLOAT, &o.top_p, "nucleus sampling when --temperature > 0"},
        {"seed", ARG_DOUBLE, &seed, "sampling seed (each conversation draws from its own stream)"},
        {"chat-template", ARG_STR, &o.chat_template, "template name; default: the model's"},
        {"batch", ARG_INT, &o.batch, "conversations generated at once (KV cache: batch x max-len rows)"},
        {"pass-tokens", ARG_INT, &o.pass_tokens, "most tokens per forward pass (prompts are prefilled in chunks)"},
        {"stop-after", ARG_DOUBLE, &stop_after,
         "stop after N conversations (over all ranks), keeping OUT.partial to continue"},
        {"time-budget", ARG_DOUBLE, &o.time_budget,
         "seconds: then write OUT (conversations in flight end at their last finished reply)"},
        DEVICE_FLAG_SPECS(&o.dev),
    };
    args_parse(argc, argv, 1, specs, sizeof specs / sizeof specs[0], USAGE, NULL, 0);
    if (!(limit >= 0 && limit < 9e15) || !(seed >= 0 && seed < 1.8e19) || !(stop_after >= 0 && stop_after < 9e15))
        fatal("--limit, --seed and --stop-after take non-negative integers");
    o.limit = (int64_t)limit;
    o.seed = (uint64_t)seed;
    o.stop_after = (int64_t)stop_after;
    if (!(o.time_budget >= 0 && o.time_budget < 1e9)) fatal("--time-budget %g: expected seconds >= 0", o.time_budget);
    dist_init(&argc, &argv); /* under mpirun: one rank of a run that shares the conversations */
    distill_run(&o);
    dist_finalize();
    return 0;
}
