/* Backend selection for the --device flag. */
#include <string.h>

#include "../common/common.h"
#include "ops.h"

const Backend *backend_by_name(const char *name) {
    if (!strcmp(name, "cpu")) return backend_cpu();
    if (!strcmp(name, "cuda")) {
#ifdef MEDUSA_CUDA
        return backend_cuda();
#else
        fatal("--device cuda: this build has no CUDA backend (nvcc not found at build time)");
#endif
    }
    fatal("--device %s: unknown device (expected cpu or cuda)", name);
}
