"""The .srt container: a safetensors file with a JSON manifest in its metadata. This module knows
the file (its layout, limits, digests and errors), not the models in it: sparse_rt.serialize turns
models and ensembles into tensors and a manifest and back.

Manifest (``__metadata__["sparse_rt"]``, a JSON string): ``format`` ("sparse_rt.srt"),
``format_version``, ``sparse_rt_version``, ``kind`` ("model" or "ensemble", with the members in
``ensemble``; files written before the kind was recorded keep that record in their source),
``arch`` (``{"name": zoo name or "pkg.module:factory", "kwargs": {...}}``, or null when the model
came from an nn.Module instance), ``source`` (sha256,
form and file name of the checkpoint it was converted from), ``layers`` (per Linear/Conv2d layer:
the Summary row, dtype, and for sparse layers their format and geometry), ``tensors_sha256``
(sha256 of the data section: the bytes after the header) and ``header_sha256`` (sha256 of the
tensor table and the rest of the manifest, so an edited manifest is caught too).

Reading opens the file once and copies it: sizes, header, tensor table, version and both digests are
checked before any tensor is built, and a loaded model does not change when its file does.
"""

import hashlib
import json
import math
import os
import stat
from typing import NamedTuple

import safetensors.torch
import torch

from .._version import __version__
from .atomic import atomic_write

FORMAT = "sparse_rt.srt"
FORMAT_VERSION = 1
MANIFEST_KEY = "sparse_rt"
# A model has at most a few thousand tensors (BERT-base: ~350), an ensemble of a hundred members a
# few tens of thousands; a tensor takes under 256 header bytes (its table entry and its share of
# the manifest). Both bounds keep a hostile header cheap: it is refused before or by parsing 8 MiB.
MAX_TENSORS = 1 << 15
MAX_HEADER_BYTES = 256 * MAX_TENSORS
_DIGESTS = ("tensors_sha256", "header_sha256")
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class SrtError(Exception):
    """Base of every error raised while reading a .srt file."""


class SrtCorruptError(SrtError, ValueError):
    """The file is truncated, has trailing bytes, or its tensors cannot be read."""


class SrtHeaderError(SrtError, ValueError):
    """The header is not a sparse_rt safetensors header (too large, not JSON, no manifest, ...)."""


class SrtIntegrityError(SrtError, ValueError):
    """A sha256 recorded in the manifest does not match the file's contents."""


class SrtVersionError(SrtError, ValueError):
    """The file was written in a format version this sparse_rt cannot read."""


class SrtArchError(SrtError, ValueError):
    """The architecture cannot be rebuilt, or does not match the file's tensors."""


def _canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def header_digest(tensor_table, manifest):
    rest = {k: v for k, v in manifest.items() if k not in _DIGESTS}
    return hashlib.sha256(_canonical([tensor_table, rest]).encode()).hexdigest()


def write(path, tensors, manifest):
    """Writes {name: tensor} and `manifest` (a JSON-able dict, completed here with the format,
    versions and both digests) to `path` atomically (temporary file, fsync, rename)."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "sparse_rt_version": __version__, **manifest}
    blob = safetensors.torch.save(tensors, metadata={MANIFEST_KEY: "{}"})
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    data = memoryview(blob)[8 + n:]
    header.pop("__metadata__", None)
    manifest["tensors_sha256"] = hashlib.sha256(data).hexdigest()
    manifest["header_sha256"] = header_digest(header, manifest)
    header["__metadata__"] = {MANIFEST_KEY: _canonical(manifest)}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # safetensors pads its header to 8 bytes
    with atomic_write(path) as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        f.write(data)


class SrtContents(NamedTuple):
    """What read() returns: the checked manifest, the tensors ({name: tensor}, views of one private
    copy of the data section, so the file may change or vanish afterwards) and the file's size."""
    manifest: dict
    tensors: dict
    file_size: int


def read(path):
    """Reads and checks `path` (sizes, header, tensor table, format version, both sha256) through one
    open file handle, so that a file replaced while it is read cannot mix two files' contents, and
    returns its SrtContents."""
    path = os.fspath(path)
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise SrtCorruptError(f"{path}: {size} bytes, too short for a .srt file (truncated?)")
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_HEADER_BYTES:
            raise SrtHeaderError(f"{path}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit; "
                                 "not a .srt file, or a corrupt one")
        if 8 + n > size:
            raise SrtCorruptError(f"{path}: truncated: the header needs {n} bytes, the file has "
                                  f"{size - 8} after the length field")
        header, manifest = _parse_header(_read_exactly(f, n, path), path)
        data_len = size - 8 - n
        end = max((t["data_offsets"][1] for t in header.values()), default=0)
        if end != data_len:
            problem = "truncated" if data_len < end else "has trailing bytes"
            raise SrtCorruptError(f"{path}: {problem}: the tensors need {end} bytes of data, "
                                  f"the file holds {data_len}")
        _check_version(manifest, path)
        data = _read_exactly(f, data_len, path)
    try:
        altered = manifest.get("header_sha256") != header_digest(header, manifest)
    except RecursionError:
        raise SrtHeaderError(f"{path}: the manifest is nested too deeply") from None
    if altered:
        raise SrtIntegrityError(f"{path}: the manifest or tensor table was altered after saving "
                                "(header sha256 mismatch)")
    digest = hashlib.sha256(data).hexdigest()
    if manifest.get("tensors_sha256") != digest:
        raise SrtIntegrityError(f"{path}: tensor data sha256 {digest[:16]}... differs from the "
                                f"recorded {str(manifest.get('tensors_sha256'))[:16]}...: the file is corrupt")
    # The digests prove the file is as written, not that its writer was sparse_rt: check the types
    # of the fields every reader relies on.
    for key, types in (("source", (dict, type(None))), ("arch", (dict, type(None))), ("layers", list)):
        if not isinstance(manifest.get(key), types):
            raise SrtHeaderError(f"{path}: the manifest's {key!r} field is missing or has the wrong type")
    return SrtContents(manifest, _tensors(header, data), size)


def _open_regular(path):
    """The file at `path` opened for reading, refused unless it is a regular file. Checked on the
    open descriptor (no race with a replacement), which is opened non-blocking: opening a FIFO for
    reading would otherwise wait for a writer."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"no such .srt file: {path}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "folder" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "device or socket"
        raise SrtCorruptError(f"{path}: a {kind}, not a regular file: not a .srt file")
    return os.fdopen(fd, "rb")


def read_manifest(path):
    """Checks `path` as read() does and returns its manifest."""
    return read(path).manifest


def _read_exactly(f, n, path):
    """n bytes from f into a new (writable, private) buffer; a file truncated meanwhile is corrupt."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        chunk = f.readinto(view[got:])
        if not chunk:
            raise SrtCorruptError(f"{path}: truncated while being read ({got} of {n} bytes)")
        got += chunk
    return buf


def _parse_json(text, what, path):
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, ints over 4300 digits, nesting
        raise SrtHeaderError(f"{path}: {what} is not valid JSON ({type(e).__name__}: {str(e)[:200]}); "
                             "not a .srt file, or a corrupt one") from None


def _parse_header(raw, path):
    # Counting the entries' keys in the raw bytes refuses a table of too many tensors before the
    # (far costlier) parse; the count after parsing is the exact check.
    counted = raw.count(b'"data_offsets"')
    if counted > MAX_TENSORS:
        raise SrtHeaderError(f"{path}: {counted} tensors exceed the limit of {MAX_TENSORS}")
    header = _parse_json(raw, "header", path)
    if not isinstance(header, dict):
        raise SrtHeaderError(f"{path}: header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not isinstance(meta.get(MANIFEST_KEY), str):
        raise SrtHeaderError(f"{path}: no sparse_rt manifest in the safetensors metadata: a plain "
                             "safetensors file? Convert a checkpoint with `sparse-rt convert`")
    if len(header) > MAX_TENSORS:
        raise SrtHeaderError(f"{path}: {len(header)} tensors exceed the limit of {MAX_TENSORS}")
    _check_tensor_table(header, path)
    manifest = _parse_json(meta[MANIFEST_KEY], "the sparse_rt manifest", path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SrtHeaderError(f"{path}: the manifest does not describe a {FORMAT} file")
    return header, manifest


def _check_tensor_table(header, path):
    """Each entry names a known dtype, a shape of non-negative ints and the byte range that shape
    needs; the ranges tile the data section in order, as safetensors writes them."""
    ranges = []
    for name, entry in header.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and entry["dtype"] in _DTYPES
                and _is_list_of_sizes(entry.get("shape")) and _is_list_of_sizes(entry.get("data_offsets"))
                and len(entry["data_offsets"]) == 2 and entry["data_offsets"][0] <= entry["data_offsets"][1]):
            raise SrtHeaderError(f"{path}: tensor {name!r} has a malformed header entry: {str(entry)[:200]}")
        ranges.append((*entry["data_offsets"], name))
    end = 0
    for start, stop, name in sorted(ranges):
        entry = header[name]
        if start != end or stop - start != math.prod(entry["shape"]) * _DTYPES[entry["dtype"]].itemsize:
            raise SrtCorruptError(f"{path}: tensor {name!r} of shape {entry['shape']} and dtype {entry['dtype']} "
                                  f"takes bytes [{start}, {stop}), which do not follow the previous tensor's end "
                                  f"{end} or do not match its size")
        end = stop


def _is_list_of_sizes(value):
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def _tensors(header, data):
    """{name: tensor} viewing `data` (the checked tensor table guarantees every range fits)."""
    tensors = {}
    for name, entry in header.items():
        dtype, shape = _DTYPES[entry["dtype"]], entry["shape"]
        start, stop = entry["data_offsets"]
        if start == stop:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        if start % dtype.itemsize:  # safetensors aligns tensors by dtype; a misaligned one gets its own buffer
            tensors[name] = torch.frombuffer(bytearray(data[start:stop]), dtype=dtype).view(shape)
        else:
            tensors[name] = torch.frombuffer(data, dtype=dtype, count=(stop - start) // dtype.itemsize,
                                             offset=start).view(shape)
    return tensors


def _check_version(manifest, path):
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise SrtVersionError(
            f"{path}: format version {version!r} (written by sparse_rt "
            f"{manifest.get('sparse_rt_version', '?')}); this sparse_rt {__version__} reads version "
            f"{FORMAT_VERSION} only" + ("; upgrade sparse_rt" if newer else ""))
