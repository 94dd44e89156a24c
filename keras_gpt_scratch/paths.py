"""Where keras-gpt-scratch finds its data files, and how it fetches them.

Every file the package reads from outside (GPT-2's BPE ranks, the corpora) is
looked up in the same places, in the same order: a path the caller gave, the
data directory named by `KERAS_GPT_SCRATCH_DATA`, the package's own copy or
cache, and, last, the network. Each file's SHA-256 is known in advance
(`KNOWN_SHA256`) and checked before the file is used, so a truncated or
tampered file is never read as if it were good.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from importlib import resources
from pathlib import Path

from keras_gpt_scratch.io_utils import atomic_file

DATA_DIR_ENV = "KERAS_GPT_SCRATCH_DATA"
CACHE_DIR_ENV = "KERAS_GPT_SCRATCH_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/keras_gpt_scratch")

# SHA-256 of every data file the package knows, keyed by its path relative to
# a data directory (the layout of `KERAS_GPT_SCRATCH_DATA`). The GPT-2 hashes
# are the ones tiktoken pins for its `gpt2` and `r50k_base` encodings; Tiny
# Shakespeare's is the one TFDS checks.
KNOWN_SHA256 = {
    "gpt2/encoder.json": (
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
    ),
    "gpt2/vocab.bpe": (
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
    ),
    "gpt2/gpt2.tiktoken": (
        "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
    ),
    "tinyshakespeare/input.txt": (
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    ),
    "verdict/the-verdict.txt": (
        "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
    ),
}


class ChecksumError(ValueError):
    """A file's SHA-256 is not the one expected for it."""


def data_dir() -> Path | None:
    """Returns the data directory named by `KERAS_GPT_SCRATCH_DATA`, if set.

    The directory is laid out like the project's test data:
    `gpt2/gpt2.tiktoken`, `gpt2/encoder.json`, `gpt2/vocab.bpe`,
    `tinyshakespeare/input.txt` and `verdict/the-verdict.txt`. Returns `None`
    when the variable is unset or empty; the directory need not exist.
    """
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else None


def data_file(relative_path: str) -> Path | None:
    """Returns `relative_path` inside `data_dir()` if that file exists."""
    root = data_dir()
    if root is None:
        return None
    path = root / relative_path
    return path if path.is_file() else None


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Returns the download cache directory, without creating it.

    Args:
        path: an explicit cache directory. Defaults to `KERAS_GPT_SCRATCH_CACHE`
            when set, else `~/.cache/keras_gpt_scratch`.
    """
    if path is None:
        path = os.environ.get(CACHE_DIR_ENV, "").strip() or DEFAULT_CACHE_DIR
    return Path(path).expanduser()


def bundled_asset(name: str) -> Path | None:
    """Returns the path of a file shipped in `keras_gpt_scratch.presets/assets`.

    Returns `None` when the package was installed without it.
    """
    try:
        resource = resources.files("keras_gpt_scratch.presets") / "assets" / name
    except ModuleNotFoundError:
        return None
    # The presets package is a plain directory on disk (no zip install), so
    # the resource is a real file path.
    path = Path(str(resource))
    return path if path.is_file() else None


def sha256_bytes(data: bytes) -> str:
    """Returns the hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Returns the hex SHA-256 of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_verified(path: str | os.PathLike, expected_sha256: str | None) -> bytes:
    """Reads a whole file and checks its SHA-256.

    Raises:
        ChecksumError: the file's hash is not `expected_sha256`.
    """
    data = Path(path).read_bytes()
    if expected_sha256 is not None:
        actual = sha256_bytes(data)
        if actual != expected_sha256:
            raise ChecksumError(
                f"{path} has SHA-256 {actual}, expected {expected_sha256}. The "
                "file is corrupt, truncated or a different version; replace it "
                "with a good copy."
            )
    return data


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to `path` through a temporary file and a rename.

    Readers see either the old file or the complete new one, never a part.
    """
    with atomic_file(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def download_file(
    url: str,
    destination: str | os.PathLike,
    expected_sha256: str | None,
    timeout: float = 60.0,
) -> Path:
    """Downloads `url` to `destination`, atomically and checked.

    The body is written to a temporary file next to `destination`, its SHA-256
    checked, and only then renamed into place, so `destination` never holds a
    partial or bad download, even if the process dies half-way.

    Args:
        url: the URL to fetch.
        destination: the final file path; parent directories are created.
        expected_sha256: the hex SHA-256 the body must have, or `None` to skip
            the check.
        timeout: socket timeout in seconds.

    Returns:
        `destination` as a `Path`.

    Raises:
        ChecksumError: the downloaded body has the wrong hash (nothing is
            written).
        OSError: the download failed or was cut short (`urllib.error.URLError`
            and `ConnectionError` are ones).
    """
    destination = Path(destination)
    with atomic_file(destination) as tmp_name:
        digest = hashlib.sha256()
        with open(tmp_name, "wb") as out:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                expected_size = response.headers.get("Content-Length")
                size = 0
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        # `read(n)` returns short at a dropped connection instead of raising.
        if expected_size is not None and size != int(expected_size):
            raise ConnectionError(
                f"Download from {url} was cut after {size} of {expected_size} "
                "bytes; it was discarded. Retry later."
            )
        actual = digest.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256:
            raise ChecksumError(
                f"Download from {url} has SHA-256 {actual}, expected "
                f"{expected_sha256}; it was discarded. Retry later, or fetch "
                "the file yourself and pass its path."
            )
    return destination
