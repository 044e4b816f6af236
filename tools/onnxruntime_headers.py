#!/usr/bin/env python3
"""Fetch onnxruntime's C/C++ API headers once, for the native kernels of the "sparse" ONNX flavour.

The onnxruntime wheel ships no headers, and this project's machines reach PyPI, Debian and npm only
(not NuGet or GitHub, where onnxruntime publishes them). The npm package below, a Unity plugin,
carries onnxruntime's headers unchanged (MIT, as onnxruntime) in its iOS framework. Its tarball
(about 150 MB) is downloaded once, checked against the registry's sha512, and only the headers are
kept, under ~/.cache/sparse_rt (tools/build_config.py onnxruntime_include_dir, where setup.py looks).

The C API is versioned and only ever appended to: headers of API version 29 (onnxruntime 1.29)
build a library that onnxruntime 1.29 and every later release load (csrc/onnxruntime/).

    python tools/onnxruntime_headers.py   # prints the folder; exit status 1 (and why) when it cannot
"""
from __future__ import annotations

import base64
import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_config  # noqa: E402  (tools/build_config.py, beside this file)

PACKAGE = "com.github.asus4.onnxruntime"
VERSION = "0.4.9"
TARBALL = f"https://registry.npmjs.org/{PACKAGE}/-/{PACKAGE}-{VERSION}.tgz"
SHA512 = "BkzxduSZ9IkeDP6Q8lz2TFU2ie7hSSvS7ZIfzMooExoq0CNzJnuuGaUJ7IsojBgqO4ouD1jXah8OYyJbCN29Fg=="
HEADERS_IN_TARBALL = ("package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64_x86_64-simulator/"
                      "onnxruntime.framework/Headers/")


def download(url: str, target: Path) -> None:
    """url into target, verified against SHA512 (ValueError when it differs)."""
    digest = hashlib.sha512()
    with urllib.request.urlopen(url, timeout=120) as response, open(target, "wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    got = base64.b64encode(digest.digest()).decode()
    if got != SHA512:
        raise ValueError(f"{url}: sha512 {got} differs from the expected {SHA512}")


def fetch() -> Path:
    """The headers' folder, downloaded and extracted first unless already there."""
    found = build_config.onnxruntime_include_dir()
    if found is not None:
        return found
    final = build_config.cache_root() / build_config.ONNXRUNTIME_HEADERS_TAG
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        tarball = Path(tmp) / "package.tgz"
        print(f"onnxruntime-headers: downloading {TARBALL} (about 150 MB, once)", file=sys.stderr, flush=True)
        download(TARBALL, tarball)
        headers = Path(tmp) / "include"
        headers.mkdir()
        with tarfile.open(tarball) as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix(HEADERS_IN_TARBALL)
                if name != member.name and member.isfile() and "/" not in name and name.endswith(".h"):
                    with tar.extractfile(member) as src, open(headers / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        if not (headers / build_config.ONNXRUNTIME_KEY_HEADER).is_file():
            raise ValueError(f"{TARBALL} holds no {build_config.ONNXRUNTIME_KEY_HEADER} under {HEADERS_IN_TARBALL}")
        headers.rename(final)  # atomic: a folder that exists is complete
    return final


def main() -> int:
    try:
        print(fetch())
    except (OSError, ValueError, tarfile.TarError) as e:
        print(f"onnxruntime-headers: cannot fetch onnxruntime's headers ({e}); the 'sparse' ONNX flavour's "
              "native kernels will not be built", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
