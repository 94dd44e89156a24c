"""The book's corpora (Tiny Shakespeare, The Verdict) and user text files."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

from keras_gpt_scratch import paths

END_OF_TEXT = "<|endoftext|>"

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
    "tinyshakespeare/input.txt"
)
THE_VERDICT_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/"
    "01_main-chapter-code/the-verdict.txt"
)

# TFDS's `tiny_shakespeare` splits, as character ranges of input.txt: the
# first 90% for training, then two halves of the last 10%.
TINY_SHAKESPEARE_SPLITS = {
    "train": (0, 1_003_854),
    "validation": (1_003_854, 1_059_624),
    "test": (1_059_624, 1_115_394),
    "all": (0, 1_115_394),
}


@dataclasses.dataclass(frozen=True)
class _Corpus:
    name: str
    relative_path: str  # In KERAS_GPT_SCRATCH_DATA and in the cache.
    url: str

    @property
    def sha256(self) -> str:
        return paths.KNOWN_SHA256[self.relative_path]


TINY_SHAKESPEARE = _Corpus(
    "Tiny Shakespeare", "tinyshakespeare/input.txt", TINY_SHAKESPEARE_URL
)
THE_VERDICT = _Corpus("The Verdict", "verdict/the-verdict.txt", THE_VERDICT_URL)


def _decode(data: bytes, origin: str | os.PathLike) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{origin} is not valid UTF-8 (byte {error.start}: {error.reason}). "
            "Convert it to UTF-8, e.g. `iconv -f latin1 -t utf-8`."
        ) from None


def _tiny_shakespeare_from_tfds() -> bytes | None:
    """The whole text through TensorFlow Datasets, or `None` without TFDS."""
    if importlib.util.find_spec("tensorflow_datasets") is None:
        return None
    import tensorflow_datasets as tfds

    parts = []
    for split in ("train", "validation", "test"):
        # Each split is a single example holding its whole text.
        dataset = tfds.load("tiny_shakespeare", split=split, download=True)
        for example in dataset.as_numpy_iterator():
            parts.append(example["text"])
    return b"".join(parts)


def _load_corpus(
    corpus: _Corpus,
    path: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None,
    use_tfds: bool = False,
) -> str:
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{corpus.name}: `path={str(path)!r}` does not exist."
            )
        return _decode(paths.read_verified(path, corpus.sha256), path)

    tried = []
    data_file = paths.data_file(corpus.relative_path)
    if data_file is not None:
        # The user's own copy: a bad one is an error, never silently replaced.
        return _decode(paths.read_verified(data_file, corpus.sha256), data_file)
    data_dir = paths.data_dir()
    tried.append(
        f"${paths.DATA_DIR_ENV}: not set"
        if data_dir is None
        else f"${paths.DATA_DIR_ENV}={data_dir}: no {corpus.relative_path}"
    )

    cached = paths.cache_dir(cache_dir) / corpus.relative_path
    if cached.is_file():
        if paths.sha256_file(cached) == corpus.sha256:
            return _decode(cached.read_bytes(), cached)
        # A partial or stale download: never use it, fetch again.
        cached.unlink()
        tried.append(f"cache {cached}: bad checksum, deleted")
    else:
        tried.append(f"cache {cached}: missing")

    if use_tfds:
        try:
            data = _tiny_shakespeare_from_tfds()
        except Exception as error:  # Offline or a TFDS problem: try the URL.
            tried.append(f"TensorFlow Datasets: {type(error).__name__}: {error}")
        else:
            if data is None:
                tried.append("TensorFlow Datasets: not installed")
            elif paths.sha256_bytes(data) != corpus.sha256:
                tried.append("TensorFlow Datasets: text differs from input.txt")
            else:
                paths.write_atomic(cached, data)
                return _decode(data, cached)

    try:
        paths.download_file(corpus.url, cached, corpus.sha256)
    except Exception as error:  # Any failure here means we have no copy.
        tried.append(f"download {corpus.url}: {type(error).__name__}: {error}")
    else:
        return _decode(cached.read_bytes(), cached)

    places = "\n".join(f"  - {place}" for place in tried)
    raise FileNotFoundError(
        f"Cannot find {corpus.name}. Tried, in order:\n{places}\n"
        f"Remedy: set {paths.DATA_DIR_ENV} to a folder holding "
        f"{corpus.relative_path}, pass `path=` to the file, or connect to the "
        "internet once so it can be downloaded into the cache."
    )


def load_tiny_shakespeare(
    split: str = "train",
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> str:
    """Returns Tiny Shakespeare (char-rnn's `input.txt`), or one of its splits.

    The splits are TFDS's `tiny_shakespeare`: `"train"` is the first 1,003,854
    characters, `"validation"` the next 55,770 and `"test"` the last 55,770;
    `"all"` is the whole 1,115,394-character text.

    The file is looked for in order: `path`; `tinyshakespeare/input.txt` in
    the `KERAS_GPT_SCRATCH_DATA` folder; the cache folder; then it is fetched
    through TensorFlow Datasets (when installed) or downloaded from char-rnn's
    repository into the cache. Every copy is checked by SHA-256; a bad cached
    copy is deleted and fetched again.

    Args:
        split: `"train"`, `"validation"`, `"test"` or `"all"`.
        path: the `input.txt` file to read.
        cache_dir: the download cache. Defaults to `KERAS_GPT_SCRATCH_CACHE`
            or `~/.cache/keras_gpt_scratch`.

    Raises:
        ValueError: unknown split, or a given file is not Tiny Shakespeare.
        FileNotFoundError: offline with no copy (the message lists remedies).

    Example:

    ```python
    train = load_tiny_shakespeare("train")
    validation = load_tiny_shakespeare("validation")
    ```
    """
    if split not in TINY_SHAKESPEARE_SPLITS:
        raise ValueError(
            f"Unknown split {split!r}; choose one of "
            f"{', '.join(map(repr, TINY_SHAKESPEARE_SPLITS))}."
        )
    text = _load_corpus(TINY_SHAKESPEARE, path, cache_dir, use_tfds=True)
    start, end = TINY_SHAKESPEARE_SPLITS[split]
    return text[start:end]


def load_the_verdict(
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> str:
    """Returns Edith Wharton's "The Verdict", the book's running example.

    20,479 characters; 5,145 GPT-2 tokens. Found like `load_tiny_shakespeare`
    (`path`, `verdict/the-verdict.txt` in `KERAS_GPT_SCRATCH_DATA`, the cache,
    then a download from the book's repository), checked by SHA-256.

    Args:
        path: the `the-verdict.txt` file to read.
        cache_dir: the download cache. Defaults to `KERAS_GPT_SCRATCH_CACHE`
            or `~/.cache/keras_gpt_scratch`.
    """
    return _load_corpus(THE_VERDICT, path, cache_dir)


def load_text_files(
    files: str | os.PathLike | Iterable[str | os.PathLike],
    separator: str = END_OF_TEXT,
) -> str:
    """Reads UTF-8 text files into one training text.

    Documents are joined with `separator`, by default `<|endoftext|>`, the
    book's document boundary. To have it encoded as GPT-2's special id 50256
    (not as plain text), tokenize with `GPTTokenizer(allowed_special="all")`;
    `create_dataset` does so by default. A leading byte-order mark is removed.

    Args:
        files: one path, or an iterable of paths.
        separator: the string put between two documents.

    Raises:
        ValueError: no file given, or a file is not valid UTF-8 (the message
            names it).
        FileNotFoundError: a file does not exist.

    Example:

    ```python
    text = load_text_files(["notes/a.txt", "notes/b.txt"])
    ds = create_dataset(text, context_length=256, stride=256, batch_size=8)
    ```
    """
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    files = [Path(file).expanduser() for file in files]
    if not files:
        raise ValueError("`files` is empty; pass at least one text file.")
    documents = []
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(
                f"Text file {file} does not exist (or is a folder)."
            )
        documents.append(_decode(file.read_bytes(), file).removeprefix("\ufeff"))
    return separator.join(documents)
