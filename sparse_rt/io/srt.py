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

Reading checks sizes, header, version and both digests before any tensor is used.
"""

import hashlib
import json
import os

import safetensors
import safetensors.torch

from .._version import __version__
from .atomic import atomic_write

FORMAT = "sparse_rt.srt"
FORMAT_VERSION = 1
MANIFEST_KEY = "sparse_rt"
MAX_HEADER_BYTES = 64 << 20
MAX_TENSORS = 1_000_000
_DIGESTS = ("tensors_sha256", "header_sha256")


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


def read_manifest(path):
    """Checks `path` (sizes, header, format version, both sha256) and returns its manifest."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such .srt file: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size < 8:
            raise SrtCorruptError(f"{path}: {size} bytes, too short for a .srt file (truncated?)")
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_HEADER_BYTES:
            raise SrtHeaderError(f"{path}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit; "
                                 "not a .srt file, or a corrupt one")
        if 8 + n > size:
            raise SrtCorruptError(f"{path}: truncated: the header needs {n} bytes, the file has "
                                  f"{size - 8} after the length field")
        header, manifest = _parse_header(f.read(n), path)
        data_len = size - 8 - n
        end = max((t["data_offsets"][1] for t in header.values()), default=0)
        if end != data_len:
            problem = "truncated" if data_len < end else "has trailing bytes"
            raise SrtCorruptError(f"{path}: {problem}: the tensors need {end} bytes of data, "
                                  f"the file holds {data_len}")
        _check_version(manifest, path)
        digest = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if manifest.get("header_sha256") != header_digest(header, manifest):
        raise SrtIntegrityError(f"{path}: the manifest or tensor table was altered after saving "
                                "(header sha256 mismatch)")
    if manifest.get("tensors_sha256") != digest.hexdigest():
        raise SrtIntegrityError(f"{path}: tensor data sha256 {digest.hexdigest()[:16]}... differs from the "
                                f"recorded {str(manifest.get('tensors_sha256'))[:16]}...: the file is corrupt")
    # The digests prove the file is as written, not that its writer was sparse_rt: check the types
    # of the fields every reader relies on.
    for key, types in (("source", (dict, type(None))), ("arch", (dict, type(None))), ("layers", list)):
        if not isinstance(manifest.get(key), types):
            raise SrtHeaderError(f"{path}: the manifest's {key!r} field is missing or has the wrong type")
    return manifest


def _parse_header(raw, path):
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SrtHeaderError(f"{path}: header is not valid JSON ({e}); not a .srt file, or a corrupt one") from None
    if not isinstance(header, dict):
        raise SrtHeaderError(f"{path}: header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or MANIFEST_KEY not in meta:
        raise SrtHeaderError(f"{path}: no sparse_rt manifest in the safetensors metadata: a plain "
                             "safetensors file? Convert a checkpoint with `sparse-rt convert`")
    if len(header) > MAX_TENSORS:
        raise SrtHeaderError(f"{path}: {len(header)} tensors exceed the limit of {MAX_TENSORS}")
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise SrtHeaderError(f"{path}: tensor {name!r} has a malformed header entry: {entry!r}")
    try:
        manifest = json.loads(meta[MANIFEST_KEY])
    except (TypeError, json.JSONDecodeError) as e:
        raise SrtHeaderError(f"{path}: the sparse_rt manifest is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SrtHeaderError(f"{path}: the manifest does not describe a {FORMAT} file")
    return header, manifest


def _check_version(manifest, path):
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise SrtVersionError(
            f"{path}: format version {version!r} (written by sparse_rt "
            f"{manifest.get('sparse_rt_version', '?')}); this sparse_rt {__version__} reads version "
            f"{FORMAT_VERSION} only" + ("; upgrade sparse_rt" if newer else ""))


def read_tensors(path):
    """{name: tensor} of the file (call read_manifest first: it checks the file)."""
    try:
        return safetensors.torch.load_file(path)
    except (safetensors.SafetensorError, ValueError, RuntimeError) as e:
        raise SrtCorruptError(f"{path}: cannot read the tensors: {e}") from None


def tensor_count(path):
    with safetensors.safe_open(path, "pt") as f:
        return len(f.keys())
