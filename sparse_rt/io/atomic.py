"""Atomic file writes: readers see the old file or the complete new one, never a partial one.

A writer killed mid-way (SIGKILL, power loss) leaves its temporary file, `.NAME.PID.XXXX.tmp`,
beside the target; the next successful save of NAME removes those whose process is gone."""

import contextlib
import os
import secrets


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Yields a file object open on a temporary file beside `path`; on a clean exit the data is
    fsync'ed and the file renamed over `path` (os.replace, atomic on POSIX and Windows). On an
    exception the temporary file is removed and `path` is left as it was."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    fd, tmp = _create_temp(directory, prefix)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
    _remove_stale_temps(directory, prefix)


def _create_temp(directory, prefix):
    """(fd, path) of a new file `PREFIX.PID.RANDOM.tmp` in `directory`. Same directory as the
    target: os.replace is only atomic within one file system; the pid lets a later save recognise
    the leftover of a killed writer. Mode 0o666 lets the kernel apply the umask as for any new file
    (mkstemp would make it 0600, and reading the umask means setting it, which races other threads)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f"{prefix}{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _fsync_directory(directory):
    # Makes the rename itself durable; not possible (nor needed) on every platform.
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_temps(directory, prefix):
    if os.name != "posix":  # os.kill(pid, 0) probes a process only on POSIX (on Windows it kills)
        return
    for name in os.listdir(directory):
        pid = name[len(prefix):].split(".", 1)[0]
        if name.startswith(prefix) and name.endswith(".tmp") and pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
