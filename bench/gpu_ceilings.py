"""The two ceilings a GPU run is read against, measured on this GPU rather than taken from a datasheet: a large bf16
matrix product through PyTorch (cuBLAS), and a large device-to-device copy (bytes read plus bytes written). Random
data (zeros run faster than real data), CUDA events, the median of 10 runs after 3 warm-ups. One line each, for
bench/bench_gpu.sh's report:

    python3 bench/gpu_ceilings.py        # prints "ceiling: ..." lines, or one line saying there is no GPU
"""
import statistics

import torch


def median_ms(fn, warmups=3, runs=10):
    for _ in range(warmups):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def main():
    if not torch.cuda.is_available():
        print("ceiling: not measured (PyTorch sees no GPU)")
        return
    dev = torch.device("cuda")
    n = 8192
    a, b = (torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(2))
    c = torch.empty(n, n, device=dev, dtype=torch.bfloat16)
    ms = median_ms(lambda: torch.matmul(a, b, out=c))
    print(f"ceiling: bf16 matrix product {n}x{n}x{n} (PyTorch {torch.__version__}, random data): "
          f"{2 * n**3 / (ms * 1e-3) / 1e12:.0f} TFLOP/s")
    del a, b, c
    size = 2 << 30  # 2 GiB: many times any L2
    src = torch.randint(0, 256, (size,), device=dev, dtype=torch.uint8)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    print(f"ceiling: device-to-device copy of {size >> 30} GiB: {2 * size / (ms * 1e-3) / 1e9:.0f} GB/s "
          "(bytes read + written)")


if __name__ == "__main__":
    main()
