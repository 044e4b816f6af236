import math
import statistics


def geomean(values):
    values = list(values)
    if not values:
        raise ValueError("geomean of no values")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def speedups(medians, subject="sparse_rt"):
    """{case: {engine: median seconds}} -> {baseline engine: {case: baseline / subject}}.

    Ratios are only formed within a case (same input, same run), never across cases.
    """
    out = {}
    for case, by_engine in medians.items():
        if subject not in by_engine:
            continue
        for engine, seconds in by_engine.items():
            if engine != subject:
                out.setdefault(engine, {})[case] = seconds / by_engine[subject]
    return out


def percentile(samples, q):
    """The q-th percentile (0..100) with linear interpolation between closest ranks, as
    numpy.percentile's default (the method deepsparse.benchmark reports)."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_stats(samples, batch):
    """Per-batch latencies in seconds -> the fields deepsparse.benchmark and MLPerf report, in ms:
    p50/p90/p99, mean, std (population, as numpy.std), min, max, items/s (= batch / mean latency)
    and the number of iterations."""
    if not samples:
        raise ValueError("latency_stats of no samples")
    ms = [s * 1e3 for s in samples]
    mean = statistics.fmean(ms)
    return {"p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
            "mean_ms": mean, "std_ms": statistics.pstdev(ms), "min_ms": min(ms), "max_ms": max(ms),
            "items_per_s": batch * 1e3 / mean, "iterations": len(ms)}
