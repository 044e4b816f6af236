"""Atomic file writes: readers see the old file or the complete new one, never a partial one.

A writer killed mid-way (SIGKILL, power loss) leaves its temporary file, `.NAME.PID.XXXXXXXX.tmp`,
beside the target; the next successful save of NAME removes those whose process is gone."""

import contextlib
import os
import re
import secrets
import stat

_RANDOM_BYTES = 4  # of the temporary file's name, written as 8 hex digits


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Yields a file object open on a temporary file beside `path`; on a clean exit the data is
    fsync'ed and the file renamed over `path` (os.replace, atomic on POSIX and Windows). On an
    exception the temporary file is removed and `path` is left as it was.

    A symlink is followed: the file it points to is replaced (the temporary file lies beside that
    one) and the link stays. A file replaced keeps its permission bits and, where the process may
    set them, its owner and group."""
    path = os.path.realpath(os.fspath(path))
    directory, name = os.path.split(path)
    prefix = f".{name}."
    fd, tmp = _create_temp(directory, prefix)
    try:
        with os.fdopen(fd, mode) as f:
            _keep_mode_and_owner(f.fileno(), path)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
    _remove_stale_temps(directory, name)


def _keep_mode_and_owner(fd, path):
    """Gives the temporary file the target's owner, group and mode before any data is written (a
    0600 file's contents never sit in a more readable file). The owner first: chown clears setuid bits."""
    try:
        target = os.stat(path)
    except FileNotFoundError:
        return
    if hasattr(os, "fchown"):
        with contextlib.suppress(PermissionError):  # only root may give a file to another user
            os.fchown(fd, target.st_uid, target.st_gid)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, stat.S_IMODE(target.st_mode))


def _create_temp(directory, prefix):
    """(fd, path) of a new file `PREFIX.PID.RANDOM.tmp` in `directory`. Same directory as the
    target: os.replace is only atomic within one file system; the pid lets a later save recognise
    the leftover of a killed writer. Mode 0o666 lets the kernel apply the umask as for any new file
    (mkstemp would make it 0600, and reading the umask means setting it, which races other threads)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f"{prefix}{os.getpid()}.{secrets.token_hex(_RANDOM_BYTES)}.tmp")
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


def _remove_stale_temps(directory, name):
    """Removes the temporary files of NAME (exactly `.NAME.PID.XXXXXXXX.tmp`, not those of a longer
    name such as NAME.999999) whose writer is gone."""
    if os.name != "posix":  # os.kill(pid, 0) probes a process only on POSIX (on Windows it kills)
        return
    temp_name = re.compile(rf"\.{re.escape(name)}\.([0-9]+)\.[0-9a-f]{{{2 * _RANDOM_BYTES}}}\.tmp")
    for entry in os.listdir(directory):
        match = temp_name.fullmatch(entry)
        if match and not _alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, entry))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
