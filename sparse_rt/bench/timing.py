import statistics
import time


def compare_latency(fns, *, warmup=0.2, min_time=1.0, min_rounds=5):
    """Times several zero-argument callables in interleaved rounds (so machine drift hits them all
    alike) and returns {name: sorted per-call seconds}."""
    for fn in fns.values():
        deadline = time.perf_counter() + warmup
        while True:
            fn()
            if time.perf_counter() >= deadline:
                break
    samples = {name: [] for name in fns}
    start = time.perf_counter()
    while min(map(len, samples.values())) < min_rounds or time.perf_counter() - start < min_time:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: sorted(s) for name, s in samples.items()}


def median(samples):
    return statistics.median(samples)
