import math


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
