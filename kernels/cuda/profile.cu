/* MEDUSA_CUDA_PROFILE=1: GPU time per kernel, GEMM shape and copy, measured with CUDA events around each one
 * (synchronizing after each, so a run is slower but every figure is that operation's own), printed to stderr
 * as a table at exit: where a step's time goes, without a profiler on the machine. GEMMs are named as cuBLAS
 * sees them: column-major op(A) op(B), m x n x k (a Linear's forward is TN with m = out features, n = tokens).
 * Rates: TFLOP/s for GEMMs and attention, GB/s for the rest (the bytes an operation must move at least, over its
 * time: set beside the GPU's memory bandwidth it says how far a memory-bound kernel is from its bound; a decoding
 * step's GEMMs, which read their weights for one row or a few, have both). */
#include <stdlib.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "cuda_common.cuh"

namespace {
struct ProfileEntry {
    long calls = 0;
    double ms = 0.0, flops = 0.0, bytes = 0.0;
};
std::map<std::string, ProfileEntry> profile_table;
cudaEvent_t profile_start, profile_stop;

void profile_print(void) {
    std::vector<std::pair<std::string, ProfileEntry>> rows(profile_table.begin(), profile_table.end());
    std::sort(rows.begin(), rows.end(), [](const auto &a, const auto &b) { return a.second.ms > b.second.ms; });
    double total = 0;
    for (const auto &r : rows) total += r.second.ms;
    fprintf(stderr, "cuda profile (MEDUSA_CUDA_PROFILE=1): GPU time per operation, each synchronized\n");
    /* first the time by kind, with the kind's aggregate rate: what an MFU below the GEMMs' own rate is lost to */
    const char *const kinds[4] = {"GEMMs", "attention", "other kernels and device copies", "host transfers"};
    ProfileEntry by_kind[4];
    for (const auto &r : rows) {
        const std::string &name = r.first;
        int kind = name.rfind("cublas", 0) == 0                  ? 0
                   : name.find("attention") != std::string::npos ? 1
                   : name == "upload" || name == "download"      ? 3
                                                                 : 2;
        by_kind[kind].calls += r.second.calls;
        by_kind[kind].ms += r.second.ms;
        by_kind[kind].flops += r.second.flops;
        by_kind[kind].bytes += r.second.bytes;
    }
    for (int k = 0; k < 4; k++) {
        const ProfileEntry &e = by_kind[k];
        if (e.calls == 0 || e.ms <= 0) continue;
        fprintf(stderr, "  %-32s %5.1f%% of the time", kinds[k], total > 0 ? 100 * e.ms / total : 0.0);
        if (k < 2 && e.flops > 0) fprintf(stderr, ", %.1f TFLOP/s", e.flops / (e.ms * 1e-3) / 1e12);
        if (k >= 2 && e.bytes > 0) fprintf(stderr, ", %.0f GB/s", e.bytes / (e.ms * 1e-3) / 1e9);
        fprintf(stderr, "\n");
    }
    fprintf(stderr, "  %6s %11s %8s %12s %8s %8s  %s\n", "share", "total ms", "calls", "us per call", "TFLOP/s", "GB/s",
            "operation");
    for (const auto &r : rows) {
        const ProfileEntry &e = r.second;
        char rate[16] = "", bandwidth[16] = "";
        if (e.flops > 0 && e.ms > 0) snprintf(rate, sizeof rate, "%.1f", e.flops / (e.ms * 1e-3) / 1e12);
        if (e.bytes > 0 && e.ms > 0) snprintf(bandwidth, sizeof bandwidth, "%.0f", e.bytes / (e.ms * 1e-3) / 1e9);
        fprintf(stderr, "  %5.1f%% %11.3f %8ld %12.1f %8s %8s  %s\n", total > 0 ? 100 * e.ms / total : 0.0, e.ms,
                e.calls, 1e3 * e.ms / (double)e.calls, rate, bandwidth, r.first.c_str());
    }
    fprintf(stderr, "  total %.3f ms\n", total);
}
} // namespace

static double pending_flops = 0.0, pending_bytes = 0.0; /* profile_next_flops' and _bytes', for the next ProfileScope */

static bool profile_enabled(void) {
    static int enabled = -1;
    if (enabled < 0) {
        const char *env = getenv("MEDUSA_CUDA_PROFILE");
        enabled = env && *env && strcmp(env, "0") != 0;
        if (enabled) {
            CUDA_CHECK(cudaEventCreate(&profile_start));
            CUDA_CHECK(cudaEventCreate(&profile_stop));
            atexit(profile_print);
        }
    }
    return enabled;
}

bool cuda_profiling(void) { return profile_enabled(); }
void profile_next_flops(double flops) { pending_flops = flops; }
void profile_next_bytes(double bytes) { pending_bytes = bytes; }

ProfileScope::ProfileScope(const char *name) : on_(profile_enabled()), flops_(0.0), bytes_(0.0) {
    if (!on_) return;
    flops_ = pending_flops, bytes_ = pending_bytes;
    pending_flops = pending_bytes = 0.0;
    name_ = name;
    CUDA_CHECK(cudaEventRecord(profile_start, cuda_stream()));
}

ProfileScope::ProfileScope(const char *kind, int m, int n, int k, int in_bytes, int out_bytes, bool accumulate)
    : on_(profile_enabled()), flops_(2.0 * m * n * k),
      bytes_((double)in_bytes * ((double)m * k + (double)k * n) + (accumulate ? 2.0 : 1.0) * out_bytes * m * n) {
    if (!on_) return;
    char shape[64];
    snprintf(shape, sizeof shape, " %dx%dx%d", m, n, k);
    name_ = std::string(kind) + shape;
    CUDA_CHECK(cudaEventRecord(profile_start, cuda_stream()));
}

ProfileScope::~ProfileScope() {
    if (!on_) return;
    float ms = 0.0f;
    CUDA_CHECK(cudaEventRecord(profile_stop, cuda_stream()));
    CUDA_CHECK(cudaEventSynchronize(profile_stop));
    CUDA_CHECK(cudaEventElapsedTime(&ms, profile_start, profile_stop));
    ProfileEntry &e = profile_table[name_];
    e.calls++;
    e.ms += ms;
    e.flops += flops_;
    e.bytes += bytes_;
}
