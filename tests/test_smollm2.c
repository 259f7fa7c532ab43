/* The real demo model, SmolLM2-135M-Instruct (Q4_1 GGUF): our logits against transformers loading the same
 * GGUF (fixture from tests/gen/gen_models.py) — top-1 agreement over a packed batch — and 32 greedy tokens
 * decoded with the KV cache, identical to transformers' generate() (tests/real_model.h). */
#include "real_model.h"

int main(void) {
    const char *env = getenv("MEDUSA_SMOLLM2_GGUF");
    const char *path = env ? env : "cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (!file_exists(path)) {
        /* make test fetches it first; running this binary alone without the model is a setup error */
        CHECK(0, "SmolLM2 GGUF present at %s (run data/fetch_demo.sh)", path);
        return test_summary();
    }
    check_real_model("SmolLM2", path, "tests/fixtures/models/smollm2_ref.safetensors");
    return test_summary();
}
