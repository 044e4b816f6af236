"""Atomic saves: a writer killed mid-way never leaves a partial file under the target name."""

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import sparse_rt
from sparse_rt.io import atomic_write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from sparse_rt.io import atomic_write
    with atomic_write(sys.argv[1]) as f:
        for i in range(10_000):
            f.write(b"new" * 20_000)
            f.flush()
            if i == 5:
                print("writing", flush=True)
            time.sleep(0.01)
""")


def _start(code, *args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env)


def _temps(directory, name):
    return sorted(n for n in os.listdir(directory) if n.startswith(f".{name}.") and n.endswith(".tmp"))


def test_killed_writer_leaves_the_previous_file_and_the_next_save_cleans_up(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old complete file")
    proc = _start(SLOW_WRITER, str(target))
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old complete file"
    leftovers = _temps(tmp_path, "model.bin")
    assert len(leftovers) == 1 and leftovers[0].startswith(f".model.bin.{proc.pid}.")
    assert os.path.getsize(tmp_path / leftovers[0]) > 0  # it was killed mid-write
    with atomic_write(target) as f:
        f.write(b"next save")
    assert target.read_bytes() == b"next save"
    assert _temps(tmp_path, "model.bin") == []  # the dead writer's temporary file is gone


def test_killed_first_save_leaves_no_file_under_the_target_name(tmp_path):
    target = tmp_path / "fresh.bin"
    proc = _start(SLOW_WRITER, str(target))
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    assert not target.exists()


SRT_WRITER = textwrap.dedent("""
    import sys, torch
    from torch import nn
    import sparse_rt
    torch.manual_seed(int(sys.argv[2]))
    model = sparse_rt.sparsify(nn.Sequential(nn.Linear(2048, 2048)), min_sparsity=0.0, format="csr")
    print("saving", flush=True)
    model.save(sys.argv[1])
    print("saved", flush=True)
""")


@pytest.mark.slow
def test_srt_save_killed_as_its_temporary_file_grows(tmp_path):
    target = tmp_path / "m.srt"
    torch.manual_seed(0)
    previous = sparse_rt.sparsify(nn.Sequential(nn.Linear(2048, 2048)), min_sparsity=0.0, format="csr")
    previous.save(target)
    proc = _start(SRT_WRITER, str(target), "1")
    assert proc.stdout.readline().strip() == "saving"
    deadline = time.monotonic() + 60
    while not any(os.path.getsize(tmp_path / n) for n in _temps(tmp_path, "m.srt")):
        assert proc.poll() is None and time.monotonic() < deadline, "the save finished before it could be killed"
        time.sleep(0.0005)
    proc.kill()
    proc.wait()
    # Complete and intact (sha256 checked): the previous file, or the new one if the kill landed
    # after the rename.
    values = sparse_rt.load(target, arch=nn.Sequential(nn.Linear(2048, 2048))).module[0].values
    torch.manual_seed(1)
    new = sparse_rt.sparsify(nn.Sequential(nn.Linear(2048, 2048)), min_sparsity=0.0, format="csr")
    assert torch.equal(values, previous.module[0].values) or torch.equal(values, new.module[0].values)


def test_save_leaves_the_temporary_file_of_a_longer_name_alone(tmp_path):
    # ".ckpt.99999999.PID.XXXXXXXX.tmp" is a save of ckpt.99999999 under way (99999999 is above
    # Linux's pid limit, so no process of that pid is alive), not a leftover of a save of ckpt.
    with atomic_write(tmp_path / "ckpt.99999999") as longer:
        longer.write(b"longer")
        with atomic_write(tmp_path / "ckpt") as f:
            f.write(b"short")
    assert (tmp_path / "ckpt.99999999").read_bytes() == b"longer"
    assert (tmp_path / "ckpt").read_bytes() == b"short"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_save_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    target = tmp_path / "secret.bin"
    target.write_bytes(b"old")
    target.chmod(0o600)
    with atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_save_through_a_symlink_replaces_the_file_it_points_to(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "model.srt"
    target.write_bytes(b"old")
    link = tmp_path / "model.srt"
    link.symlink_to(target)
    torch.manual_seed(0)
    model = sparse_rt.sparsify(nn.Sequential(nn.Linear(8, 4)), min_sparsity=0.0, format="csr")
    model.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert torch.equal(sparse_rt.load(target, arch=nn.Sequential(nn.Linear(8, 4))).module[0].values,
                       model.module[0].values)
    assert _temps(tmp_path / "real", "model.srt") == [] and _temps(tmp_path, "model.srt") == []
