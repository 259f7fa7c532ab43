/* Self-distillation's output (infer/distill.c) read back: every conversation of the ShareGPT fixture that has a reply
 * within --max-len keeps its id and its user turns, and each assistant turn is what plain greedy decoding
 * (decode_plain, golden-tested against transformers) writes after the chat template's prompt of the turns before it,
 * the earlier replies being the regenerated ones (turn by turn, as the reference's self-distillation script does). */
#include <stdlib.h>
#include <unistd.h>

#include "../data/chat_template.h"
#include "../data/model_tokenizer.h"
#include "../infer/decoder.h"
#include "../infer/distill.h"
#include "test.h"

#define MODEL "tests/fixtures/models/tiny_hd64/gguf/tiny_hd64.F32.gguf"
#define INPUT "tests/fixtures/chat/conversations.json"
#define MAX_NEW 16
#define MAX_LEN 256

static int same_text(const Turn *a, const Turn *b) { return a->len == b->len && memcmp(a->text, b->text, a->len) == 0; }

int main(void) {
    make_tmpdir("/tmp/test_distill.XXXXXX");
    char *out = tmp_path("out.jsonl");
    DistillOptions o;
    distill_options_defaults(&o);
    o.model = MODEL, o.input = INPUT, o.out = out, o.chat_template = "mistral";
    o.max_new_tokens = MAX_NEW, o.max_len = MAX_LEN, o.batch = 3, o.pass_tokens = 24, o.limit = 20;
    distill_run(&o);

    ModelTokenizer text;
    model_tokenizer_load(&text, MODEL, 0);
    ChatTemplate tmpl;
    chat_template_init(&tmpl, "mistral", text.tok, text.jinja, text.bos, text.eos);
    int stop = chat_stop_id(&tmpl, text.tok);
    Model m;
    model_load(&m, MODEL, backend_cpu(), DT_F32);
    Decoder d;
    decoder_init(&d, &m, NULL, NULL, MAX_LEN); /* a reply also ends where the context is full */
    DecodeOptions greedy;
    decode_options_defaults(&greedy);

    ShareGPTReader src, got;
    sharegpt_open(&src, INPUT);
    sharegpt_open(&got, out);
    Conversation s, g;
    int convs = 0, ids_kept = 0, users = 0, users_kept = 0, replies = 0, replies_equal = 0, changed = 0, n_src = 0;
    int have_g = sharegpt_next(&got, &g);
    while (n_src < 20 && sharegpt_next(&src, &s)) {
        n_src++;
        if (!have_g || !s.id || !g.id || strcmp(s.id, g.id) != 0) { /* skipped: its first prompt fills --max-len */
            conversation_free(&s);
            continue;
        }
        convs++;
        ids_kept++;
        for (int t = 0; t < g.n_turns && t < s.n_turns; t++) {
            if (g.turns[t].role == ROLE_USER) {
                users++;
                users_kept += same_text(&g.turns[t], &s.turns[t]);
                continue;
            }
            int32_t *prompt, reply[MAX_NEW];
            int n = chat_generation_prompt(&tmpl, text.tok, g.turns, t, &prompt);
            DecodeStats st;
            int k = decode_plain(&d, prompt, n, MAX_NEW, stop, &greedy, reply, NULL, NULL, &st);
            if (k > 0 && reply[k - 1] == stop) k--;
            size_t raw_len, len;
            char *raw = tokenizer_decode(text.tok, reply, k, 1, &raw_len), *want = utf8_lossy(raw, raw_len, &len);
            free(raw);
            Turn w = {ROLE_ASSISTANT, want, len};
            text_strip(&w.text, &w.len);
            replies++;
            replies_equal += same_text(&w, &g.turns[t]);
            changed += !same_text(&g.turns[t], &s.turns[t]);
            free(want);
            free(prompt);
        }
        conversation_free(&s);
        conversation_free(&g);
        have_g = sharegpt_next(&got, &g);
    }
    CHECK(convs >= 10 && !have_g, "%d of the first 20 conversations in the output, in input order", convs);
    CHECK(ids_kept == convs && users_kept == users && users > convs,
          "ids kept (%d/%d), user turns kept (%d/%d, later turns included)", ids_kept, convs, users_kept, users);
    CHECK(replies > convs && replies_equal == replies,
          "each reply equals plain greedy decoding after the turns before it: %d/%d (%d differ from the file's)",
          replies_equal, replies, changed);
    sharegpt_close(&src);
    sharegpt_close(&got);
    decoder_free(&d);
    model_free(&m);
    chat_template_free(&tmpl);
    model_tokenizer_free(&text);
    remove_tmpdir();
    free(out);
    return test_summary();
}
