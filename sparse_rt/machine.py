"""Facts of the machine: what every result file records about where it was measured (machine,
versions, date), and the memory a process may still allocate."""

import datetime
import functools
import importlib.metadata
import os
import platform
import resource
import statistics
from pathlib import Path
from typing import Optional

import torch

from ._version import __version__
from .ops import build_info
from .ops import core_round_trip_ns as _round_trip_between


def _cpuinfo():
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model():
    """The CPU's model name, with its family and model numbers where /proc/cpuinfo gives them: a
    virtual machine may name every AMD host "AMD EPYC", and results from a Zen 3 and a Zen 4 must not
    pass for one machine's (family 25 model 1 against model 17)."""
    fields = {}
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
        if not line.strip():
            break  # the first CPU's block is enough
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


@functools.lru_cache(maxsize=None)
def cache_bytes(level: int) -> Optional[int]:
    """The size of CPU 0's level-`level` data (or unified) cache in bytes, as sysfs tells it; None
    where it does not."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if int((index / "level").read_text()) != level or (index / "type").read_text().strip() == "Instruction":
                continue
            size = (index / "size").read_text().strip()
            return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        except (OSError, ValueError):
            continue
    return None


def physical_cores():
    """Distinct (physical id, core id) pairs of /proc/cpuinfo; None where it does not say."""
    cores, socket = set(), None
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            socket = value.strip()
        elif key.strip() == "core id":
            cores.add((socket, value.strip()))
    return len(cores) or None


def memory_headroom() -> int | None:
    """Bytes this process may still allocate: the smaller of the system's available memory and
    what its address-space limit (RLIMIT_AS) leaves; None where /proc does not say (not Linux)."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    fields = {line.split(":")[0]: line.split()[1:] for line in (meminfo + status).splitlines() if ":" in line}
    kib = lambda name: int(fields[name][0]) * 1024 if name in fields else None
    available = kib("MemAvailable")
    if available is None:
        return None
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY and kib("VmSize") is not None:
        available = min(available, max(limit - kib("VmSize"), 0))
    return available


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_average():
    """The 1-, 5- and 15-minute load averages (runnable processes), or None where the OS does not say."""
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def core_round_trip_ns(rounds=20000, repeats=3):
    """How far apart the first two CPUs this process may run on are: the median over `repeats` runs
    of a cache line's round trip between them in ns (`rounds` exchanges each), or None where there
    are fewer than two or they cannot be pinned. On a host that places its vCPUs near each other at
    one time and far apart at another, multi-threaded timings follow it (this project's Zen 4 host:
    60-80 ns near, 330-380 ns far), so result files record it beside the load."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None
    if len(cpus) < 2:
        return None
    runs = [_round_trip_between(cpus[0], cpus[1], rounds) for _ in range(repeats)]
    return None if None in runs else round(statistics.median(runs), 1)


def busy_warning(start, end, threads):
    """A warning (str) when the 1-minute load average at the start or the end of a run, `start` and
    `end` as load_average returns them, exceeds the `threads` the run uses, else None: the run
    itself accounts for at most `threads` of the load, so more means other processes were running
    and took CPU time from it (the 1-minute average trails: the start still shows the minute
    before)."""
    over = [(when, load[0]) for when, load in (("start", start), ("end", end)) if load and load[0] > threads]
    if not over:
        return None
    at = " and ".join(f"{load:.2f} at the {when}" for when, load in over)
    return (f"machine busy: 1-minute load average {at} of the run, above the {threads} thread(s) it uses; "
            "other processes took CPU time, so these timings are slower and noisier than on a quiet machine")


def machine_info():
    """{"date", "machine": {cpu, cores, physical_cores, threads, platform, gpu, load_average_1m,
    core_round_trip_ns},
    "versions": {python, torch, cuda, sparse_rt, sparse_rt_build, numpy, onnxruntime,
    onnxruntime_extensions, openvino}}."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "physical_cores": physical_cores(),
                    "threads": torch.get_num_threads(), "platform": platform.platform(), "gpu": gpu,
                    # other processes competing for the cores make every number here slower
                    "load_average_1m": (load_average() or [None])[0],
                    # how far apart the first two CPUs were placed (see core_round_trip_ns)
                    "core_round_trip_ns": core_round_trip_ns()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda, "sparse_rt": __version__,
                     "sparse_rt_build": build_info(), "numpy": _version("numpy"),
                     "onnxruntime": _version("onnxruntime"),
                     "onnxruntime_extensions": _version("onnxruntime-extensions"), "openvino": _version("openvino")},
    }
