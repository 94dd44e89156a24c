"""GPT-2's byte-pair encoding tokenizer, backed by tiktoken."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import os
import tempfile
import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tiktoken
import tiktoken.load
from keras_hub.src.utils.python_utils import classproperty
from keras_hub.src.utils.tensor_utils import (
    convert_to_ragged_batch,
    is_int_dtype,
    preprocessing_function,
)
from keras_hub.tokenizers import Tokenizer

from keras_gpt_scratch import paths
from keras_gpt_scratch.models import gpt_presets
from keras_gpt_scratch.models.gpt_backbone import GPTBackbone
from keras_gpt_scratch.weights.config import END_OF_TEXT_ID, GPT2_VOCABULARY_SIZE

try:
    from tiktoken_ext.openai_public import r50k_pat_str as GPT2_PATTERN
except ImportError:  # pragma: no cover - tiktoken moved its constants.
    # tiktoken's rewrite of GPT-2's split regex (same splits, faster).
    GPT2_PATTERN = (
        r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|"""
        r"""\s+(?!\S)|\s"""
    )

END_OF_TEXT = "<|endoftext|>"
VOCABULARY_SIZE = GPT2_VOCABULARY_SIZE

RANKS_FILENAME = "gpt2.tiktoken"
RANKS_SHA256 = paths.KNOWN_SHA256["gpt2/gpt2.tiktoken"]
ENCODER_JSON_SHA256 = paths.KNOWN_SHA256["gpt2/encoder.json"]
VOCAB_BPE_SHA256 = paths.KNOWN_SHA256["gpt2/vocab.bpe"]

# What tiktoken downloads. Its cache names each file by the SHA-1 of its URL.
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
GPT2_VOCAB_BPE_URL = (
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"
)
GPT2_ENCODER_JSON_URL = (
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"
)

# Serialises ranks loading (shared by all tokenizers) and the brief change of
# TIKTOKEN_CACHE_DIR below.
_LOAD_LOCK = threading.RLock()


@dataclasses.dataclass(frozen=True)
class _GPT2BPE:
    encoding: tiktoken.Encoding
    ranks: dict[bytes, int]

    @functools.cached_property
    def id_to_token(self) -> tuple[str, ...]:
        """Token strings by id, written as in GPT-2's `encoder.json`."""
        byte_map = _bytes_to_unicode()
        tokens = [""] * VOCABULARY_SIZE
        for token, rank in self.ranks.items():
            tokens[rank] = "".join(byte_map[byte] for byte in token)
        tokens[END_OF_TEXT_ID] = END_OF_TEXT
        return tuple(tokens)

    @functools.cached_property
    def token_to_id(self) -> dict[str, int]:
        return {token: index for index, token in enumerate(self.id_to_token)}


# Every source is checked against the pinned hashes, so they all hold the same
# ranks: parse them once per process and share the result.
_BPE_CACHE: dict[str, _GPT2BPE] = {}


def _bpe_from_ranks(ranks: dict[bytes, int], origin: str) -> _GPT2BPE:
    if len(ranks) != END_OF_TEXT_ID or set(ranks.values()) != set(
        range(END_OF_TEXT_ID)
    ):
        raise ValueError(
            f"{origin} does not hold GPT-2's {END_OF_TEXT_ID} BPE ranks "
            f"(found {len(ranks)})."
        )
    encoding = tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: END_OF_TEXT_ID},
        explicit_n_vocab=VOCABULARY_SIZE,
    )
    return _GPT2BPE(encoding=encoding, ranks=ranks)


def _parse_tiktoken_ranks(data: bytes, origin: str) -> dict[bytes, int]:
    ranks = {}
    for line in data.splitlines():
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError as error:
            raise ValueError(f"Cannot parse line {line!r} of {origin}.") from error
    return ranks


def _dump_tiktoken_ranks(ranks: dict[bytes, int]) -> bytes:
    """Serialises ranks in tiktoken's format (byte-identical to r50k_base)."""
    lines = (
        base64.b64encode(token) + b" " + str(rank).encode() + b"\n"
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])
    )
    return b"".join(lines)


def _load_tiktoken_file(path: Path) -> _GPT2BPE:
    # Read and check first: a bad file is reported, never parsed.
    data = paths.read_verified(path, RANKS_SHA256)
    with _LOAD_LOCK:
        if RANKS_SHA256 not in _BPE_CACHE:
            ranks = _parse_tiktoken_ranks(data, str(path))
            _BPE_CACHE[RANKS_SHA256] = _bpe_from_ranks(ranks, str(path))
        return _BPE_CACHE[RANKS_SHA256]


@contextlib.contextmanager
def _tiktoken_cache_disabled():
    # tiktoken's loaders copy every file they read, local ones included, into
    # their cache; an empty TIKTOKEN_CACHE_DIR turns that off.
    with _LOAD_LOCK:
        saved = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = ""
        try:
            yield
        finally:
            if saved is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = saved


def _load_data_gym_files(vocab_bpe: Path, encoder_json: Path) -> _GPT2BPE:
    """Loads OpenAI's original `encoder.json` + `vocab.bpe` pair."""
    paths.read_verified(vocab_bpe, VOCAB_BPE_SHA256)
    paths.read_verified(encoder_json, ENCODER_JSON_SHA256)
    with _LOAD_LOCK:
        if RANKS_SHA256 not in _BPE_CACHE:
            with _tiktoken_cache_disabled():
                ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
                    vocab_bpe_file=str(vocab_bpe),
                    encoder_json_file=str(encoder_json),
                    vocab_bpe_hash=VOCAB_BPE_SHA256,
                    encoder_json_hash=ENCODER_JSON_SHA256,
                )
            _BPE_CACHE[RANKS_SHA256] = _bpe_from_ranks(ranks, str(vocab_bpe))
        return _BPE_CACHE[RANKS_SHA256]


def _load_directory(directory: Path) -> _GPT2BPE | None:
    """Loads `gpt2.tiktoken`, or `encoder.json` + `vocab.bpe`, from a folder.

    Returns `None` when the folder holds neither.
    """
    if (directory / RANKS_FILENAME).is_file():
        return _load_tiktoken_file(directory / RANKS_FILENAME)
    if (directory / "encoder.json").is_file() and (directory / "vocab.bpe").is_file():
        return _load_data_gym_files(directory / "vocab.bpe", directory / "encoder.json")
    return None


def _load_explicit_path(ranks_path: Path) -> _GPT2BPE:
    if ranks_path.is_dir():
        # The folder itself, or a data directory laid out like
        # KERAS_GPT_SCRATCH_DATA (with a `gpt2/` subfolder).
        for directory in (ranks_path, ranks_path / "gpt2"):
            bpe = _load_directory(directory)
            if bpe is not None:
                return bpe
        raise FileNotFoundError(
            f"`ranks_path={str(ranks_path)!r}` is a folder without "
            f"`{RANKS_FILENAME}` or `encoder.json` + `vocab.bpe` (looked in it "
            "and in its `gpt2/` subfolder)."
        )
    if ranks_path.is_file():
        if ranks_path.suffix in (".json", ".bpe"):
            raise ValueError(
                f"`ranks_path={str(ranks_path)!r}` is one file of the "
                "`encoder.json` + `vocab.bpe` pair; pass the folder that holds "
                "both instead."
            )
        return _load_tiktoken_file(ranks_path)
    raise FileNotFoundError(
        f"`ranks_path={str(ranks_path)!r}` does not exist. Pass a "
        f"`{RANKS_FILENAME}` file, or a folder holding it or `encoder.json` + "
        "`vocab.bpe`."
    )


def _tiktoken_cache_dir() -> Path | None:
    # The same lookup as `tiktoken.load.read_file_cached`.
    for variable in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if variable in os.environ:
            value = os.environ[variable]
            return Path(value) if value else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def _download_ranks() -> _GPT2BPE:
    """Downloads the ranks through tiktoken (cached in tiktoken's cache)."""
    ranks = tiktoken.load.load_tiktoken_bpe(R50K_URL, expected_hash=RANKS_SHA256)
    with _LOAD_LOCK:
        if RANKS_SHA256 not in _BPE_CACHE:
            _BPE_CACHE[RANKS_SHA256] = _bpe_from_ranks(ranks, R50K_URL)
        return _BPE_CACHE[RANKS_SHA256]


def _url_cache_name(url: str) -> str:
    return hashlib.sha1(url.encode()).hexdigest()


def load_gpt2_bpe(
    ranks_path: str | os.PathLike | None = None,
) -> tuple[tiktoken.Encoding, str]:
    """Finds GPT-2's BPE ranks and builds the tiktoken encoding.

    Places tried, in order, stopping at the first that has the files:

    1. `ranks_path`, when given (then nothing else is tried): a
       `gpt2.tiktoken` file, or a folder holding `gpt2.tiktoken` or OpenAI's
       `encoder.json` + `vocab.bpe` (directly or in a `gpt2/` subfolder).
    2. The data directory in `KERAS_GPT_SCRATCH_DATA`: `gpt2/gpt2.tiktoken`,
       or `gpt2/encoder.json` + `gpt2/vocab.bpe`.
    3. The copy shipped in the package (`keras_gpt_scratch/presets/assets`).
    4. tiktoken's cache (`$TIKTOKEN_CACHE_DIR`, default
       `<tmp>/data-gym-cache`).
    5. tiktoken's download of `r50k_base.tiktoken` (the GPT-2 ranks).

    Every file's SHA-256 is checked against the hashes tiktoken pins for
    GPT-2. A bad file given in 1 or 2 is an error; a bad copy in 3 or 4 is
    skipped. The encoding is built from the ranks here, never through
    `tiktoken.get_encoding`, which would copy local files into its cache.

    Args:
        ranks_path: an explicit ranks file or folder (place 1).

    Returns:
        `(encoding, source)`: the `tiktoken.Encoding` and a description of
        where its ranks came from.

    Raises:
        FileNotFoundError: no place had the ranks (the message lists them).
        paths.ChecksumError: a file given in 1 or 2 is not GPT-2's.
    """
    bpe, source = _resolve_bpe(ranks_path)
    return bpe.encoding, source


def _resolve_bpe(ranks_path: str | os.PathLike | None) -> tuple[_GPT2BPE, str]:
    """`load_gpt2_bpe`, returning the ranks along with the encoding."""
    if ranks_path is not None:
        path = Path(ranks_path).expanduser()
        return _load_explicit_path(path), str(path)

    tried = []
    data_dir = paths.data_dir()
    if data_dir is None:
        tried.append(f"${paths.DATA_DIR_ENV}: not set")
    else:
        bpe = _load_directory(data_dir / "gpt2")
        if bpe is not None:
            return bpe, str(data_dir / "gpt2")
        tried.append(
            f"${paths.DATA_DIR_ENV}={data_dir}: no gpt2/{RANKS_FILENAME} nor "
            "gpt2/encoder.json + gpt2/vocab.bpe"
        )

    bundled = paths.bundled_asset(RANKS_FILENAME)
    if bundled is None:
        tried.append("the copy bundled in keras_gpt_scratch.presets: missing")
    else:
        try:
            return _load_tiktoken_file(bundled), str(bundled)
        except paths.ChecksumError as error:
            tried.append(f"the bundled copy: {error}")

    cache = _tiktoken_cache_dir()
    if cache is None:
        tried.append("tiktoken's cache: disabled (TIKTOKEN_CACHE_DIR is empty)")
    else:
        cached_ranks = cache / _url_cache_name(R50K_URL)
        cached_bpe = cache / _url_cache_name(GPT2_VOCAB_BPE_URL)
        cached_json = cache / _url_cache_name(GPT2_ENCODER_JSON_URL)
        try:
            if cached_ranks.is_file():
                return _load_tiktoken_file(cached_ranks), str(cached_ranks)
            if cached_bpe.is_file() and cached_json.is_file():
                bpe = _load_data_gym_files(cached_bpe, cached_json)
                return bpe, str(cache)
            tried.append(f"tiktoken's cache {cache}: no GPT-2 files")
        except paths.ChecksumError as error:
            tried.append(f"tiktoken's cache {cache}: {error}")

    try:
        return _download_ranks(), R50K_URL
    except Exception as error:  # Any failure here means "offline": report all.
        tried.append(f"download of {R50K_URL}: {type(error).__name__}: {error}")

    places = "\n".join(f"  - {place}" for place in tried)
    raise FileNotFoundError(
        "Cannot find GPT-2's BPE ranks. Tried, in order:\n"
        f"{places}\n"
        f"Remedy: set {paths.DATA_DIR_ENV} to a folder with gpt2/{RANKS_FILENAME} "
        f"(or gpt2/encoder.json + gpt2/vocab.bpe), pass `ranks_path=` to "
        "GPTTokenizer, reinstall keras-gpt-scratch (it ships the ranks), or "
        "connect to the internet once so tiktoken can download and cache them."
    )


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character map (its encoder.py):
    # `encoder.json` writes tokens with these characters, e.g. " world" as
    # "Ġworld".
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def _normalize_allowed_special(value: Any) -> str | frozenset[str]:
    if value is None:
        return frozenset()
    if value == "all":
        return "all"
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Collection):
        raise TypeError(
            "`allowed_special` must be 'all' or a collection of special token "
            f"strings. Received: {value!r}."
        )
    value = frozenset(value)
    unknown = value - {END_OF_TEXT}
    if unknown:
        raise ValueError(
            f"`allowed_special` names tokens GPT-2 does not have: "
            f"{sorted(unknown)}. Its only special token is {END_OF_TEXT!r}."
        )
    return value


def _encode_texts(
    encoding: tiktoken.Encoding,
    texts: list[str],
    allowed_special: str | frozenset[str],
) -> list[list[int]]:
    if allowed_special:
        if len(texts) == 1:
            return [
                encoding.encode(
                    texts[0], allowed_special=allowed_special, disallowed_special=()
                )
            ]
        return encoding.encode_batch(
            texts, allowed_special=allowed_special, disallowed_special=()
        )
    if len(texts) == 1:
        return [encoding.encode_ordinary(texts[0])]
    return encoding.encode_ordinary_batch(texts)


def _decode_utf8(value: Any, index: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"Input string {index} is not valid UTF-8 ({error}). Decode your "
                "text to `str` first, choosing how to handle bad bytes."
            ) from None
    raise TypeError(
        f"Input {index} is a {type(value).__name__}, not a string. "
        "`tokenize()` takes a str, a list of str, or a string array/tensor."
    )


def _canonicalize_texts(inputs: Any) -> tuple[list[str], bool]:
    """Returns `(texts, batched)` for the eager Python path."""
    if isinstance(inputs, (str, bytes)):
        return [_decode_utf8(inputs, 0)], False
    if isinstance(inputs, (tf.Tensor, tf.RaggedTensor)) or keras.ops.is_tensor(inputs):
        if isinstance(inputs, tf.RaggedTensor) or inputs.dtype != tf.string:
            raise TypeError(
                "`tokenize()` takes string tensors; received a tensor of dtype "
                f"{inputs.dtype}."
            )
        inputs = np.asarray(inputs.numpy(), dtype=object)
    if isinstance(inputs, np.ndarray):
        if inputs.dtype.kind not in "USO":
            raise TypeError(
                "`tokenize()` takes string arrays; received an array of dtype "
                f"{inputs.dtype}."
            )
        if inputs.ndim == 0:
            return [_decode_utf8(inputs.item(), 0)], False
        if inputs.ndim != 1:
            raise ValueError(
                "`tokenize()` takes a string or a 1-D batch of strings; received "
                f"an array of shape {inputs.shape}."
            )
        inputs = inputs.tolist()
    if isinstance(inputs, (list, tuple)):
        return [_decode_utf8(text, i) for i, text in enumerate(inputs)], True
    raise TypeError(
        "`tokenize()` takes a str, a list of str, or a string array/tensor. "
        f"Received: {type(inputs).__name__}."
    )


def _canonicalize_ids(inputs: Any) -> tuple[list[list[int]], bool]:
    """Returns `(sequences, batched)` for the eager Python path."""
    if isinstance(inputs, tf.RaggedTensor):
        return inputs.to_list(), True
    if isinstance(inputs, (list, tuple)) and any(
        isinstance(item, (list, tuple, np.ndarray)) for item in inputs
    ):
        # A ragged batch given as lists.
        return [np.asarray(seq).tolist() for seq in inputs], True
    if keras.ops.is_tensor(inputs) or isinstance(inputs, tf.Tensor):
        inputs = keras.ops.convert_to_numpy(inputs)
    array = np.asarray(inputs)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"`detokenize()` takes integer token ids; received dtype {array.dtype}."
        )
    if array.ndim == 0:
        return [[int(array)]], False
    if array.ndim == 1:
        return [array.astype(np.int64).tolist()], False
    if array.ndim == 2:
        return array.astype(np.int64).tolist(), True
    raise ValueError(
        f"`detokenize()` takes 0-, 1- or 2-D ids; received shape {array.shape}."
    )


def _check_id_range(sequences: list[list[int]]) -> None:
    for sequence in sequences:
        for token_id in sequence:
            if not 0 <= token_id < VOCABULARY_SIZE:
                raise ValueError(
                    f"Token id {token_id} is outside GPT-2's vocabulary "
                    f"[0, {VOCABULARY_SIZE})."
                )


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class GPTTokenizer(Tokenizer):
    """GPT-2's byte-pair encoding tokenizer, backed by tiktoken.

    Produces exactly the token ids of OpenAI's GPT-2 tokenizer (50,257 ids;
    `<|endoftext|>` is 50256 and is also the start, end and padding token).
    tiktoken does the encoding, in Rust; inside a `tf.function` or a
    `tf.data` pipeline the layer calls it through `tf.numpy_function`, so it
    can be mapped over datasets like any KerasHub tokenizer.

    Where the BPE ranks come from, in order: the preset's assets (when loaded
    with `from_preset()` or from a `.keras` file), `ranks_path`, the data
    directory in `KERAS_GPT_SCRATCH_DATA`, the copy shipped in the package,
    tiktoken's cache, and last tiktoken's download. Every file is checked
    against the SHA-256 that tiktoken pins for GPT-2. The ranks are found on
    first use (not at construction), so a restored tokenizer never looks at
    the places its assets replace.

    Special tokens: by default the text `<|endoftext|>` in your input is
    encoded as ordinary text (`[27, 91, 437, 1659, 5239, 91, 29]`), never as
    the special id 50256, so text from users or the web cannot inject
    document boundaries. Pass `allowed_special="all"` (or
    `{"<|endoftext|>"}`) to turn the literal into id 50256, e.g. for a corpus
    whose documents you joined with it. The preprocessor adds the real
    start/end ids itself.

    Output follows KerasHub's conventions. Called eagerly, a string gives a
    1-D NumPy array of ids and a batch (list, NumPy or tensor of strings)
    gives a list of lists. Inside a `tf.function` or `tf.data` pipeline, a
    scalar string gives a dense 1-D `tf.Tensor` and a batch gives a
    `tf.RaggedTensor`. With `sequence_length`, outputs are dense, truncated
    or padded with 50256.

    Args:
        ranks_path: a `gpt2.tiktoken` file, or a folder holding
            `gpt2.tiktoken` or OpenAI's `encoder.json` + `vocab.bpe`. Defaults
            to looking in the places above.
        sequence_length: int. If set, outputs are padded or truncated to this
            length. Defaults to `None` (ragged).
        allowed_special: `"all"`, or a collection of the special tokens that
            are encoded as special ids when they appear as text. Defaults to
            none (`<|endoftext|>` in text is plain text).
        dtype: the integer output dtype. Defaults to `"int32"`.

    Call arguments:
        inputs: a string, a list of strings, or a string array or tensor of
            rank 0 or 1.

    Example:

    ```python
    tokenizer = keras_gpt_scratch.tokenizers.GPTTokenizer()

    # Unbatched input.
    tokenizer("Hello, world")  # array([15496, 11, 995], dtype=int32)

    # Batched input.
    tokenizer(["Hello, world", "The fox slept."])

    # Detokenization.
    tokenizer.detokenize([15496, 11, 995])  # "Hello, world"

    # Let "<|endoftext|>" in the text through as the special token.
    tokenizer = keras_gpt_scratch.tokenizers.GPTTokenizer(allowed_special="all")
    tokenizer("end.<|endoftext|>")  # array([437, 13, 50256], dtype=int32)

    # In a tf.data pipeline.
    ds = tf.data.Dataset.from_tensor_slices(["a b", "c"]).batch(2)
    ds = ds.map(tokenizer)  # ragged int32 batches
    ```
    """

    backbone_cls = GPTBackbone

    def __init__(
        self,
        ranks_path: str | os.PathLike | None = None,
        sequence_length: int | None = None,
        allowed_special: str | Collection[str] | None = (),
        dtype: str = "int32",
        **kwargs,
    ) -> None:
        if not is_int_dtype(dtype):
            raise ValueError(
                f"`GPTTokenizer` outputs integer ids; `dtype` must be an integer "
                f"type. Received: dtype={dtype!r}."
            )
        if sequence_length is not None and (
            isinstance(sequence_length, bool)
            or not isinstance(sequence_length, (int, np.integer))
            or sequence_length <= 0
        ):
            raise ValueError(
                "`sequence_length` must be a positive int or None. Received: "
                f"{sequence_length!r}."
            )
        super().__init__(dtype=dtype, **kwargs)
        self.ranks_path = None if ranks_path is None else os.fspath(ranks_path)
        self.sequence_length = sequence_length
        self.allowed_special = _normalize_allowed_special(allowed_special)
        self.file_assets = [RANKS_FILENAME]
        self.ranks_source = None
        self._bpe = None
        # No weights to build; Keras' model.quantize() skips only built layers.
        self.built = True
        # GPT-2 has one special token; it starts, ends and pads sequences.
        self._add_special_token(END_OF_TEXT, "start_token")
        self._add_special_token(END_OF_TEXT, "end_token")
        self._add_special_token(END_OF_TEXT, "pad_token")

    @classproperty
    def presets(cls) -> dict[str, dict]:
        """The built-in presets: name -> spec (all use GPT-2's tokenizer)."""
        return dict(gpt_presets.builtin_presets())

    @classmethod
    def from_preset(cls, preset, **kwargs) -> GPTTokenizer:
        """Builds the tokenizer of a built-in preset or a preset directory.

        Every built-in preset uses GPT-2's vocabulary, so a built-in name
        gives `GPTTokenizer(**kwargs)`. A directory written by
        `save_to_preset()` is loaded by keras_hub, and the ranks come from its
        `assets/tokenizer/gpt2.tiktoken` (no network needed).
        """
        if isinstance(preset, os.PathLike):
            preset = os.fspath(preset)
        if isinstance(preset, str) and preset in gpt_presets.builtin_presets():
            return cls(**kwargs)
        gpt_presets.check_known_preset(preset)
        return super().from_preset(preset, **kwargs)

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The `tiktoken.Encoding`, loading the ranks on first use."""
        return self._get_bpe().encoding

    def _get_bpe(self) -> _GPT2BPE:
        if self._bpe is None:
            with _LOAD_LOCK:
                if self._bpe is None:
                    bpe, source = _resolve_bpe(self.ranks_path)
                    self._bpe = bpe
                    self.ranks_source = source
        return self._bpe

    def save_assets(self, dir_path: str) -> None:
        data = _dump_tiktoken_ranks(self._get_bpe().ranks)
        with open(os.path.join(dir_path, RANKS_FILENAME), "wb") as file:
            file.write(data)

    def load_assets(self, dir_path: str) -> None:
        directory = Path(dir_path)
        bpe = _load_directory(directory)
        if bpe is None:
            raise FileNotFoundError(
                f"{directory} holds no `{RANKS_FILENAME}` (nor `encoder.json` + "
                "`vocab.bpe`); it is not a GPTTokenizer asset folder."
            )
        self._bpe = bpe
        self.ranks_source = str(directory)

    def export_to_transformers(self, path) -> None:
        """Writes GPT-2's tokenizer files in Hugging Face's layout.

        `vocab.json` and `merges.txt` (regenerated from the ranks,
        byte-identical to OpenAI's `encoder.json` and `vocab.bpe`),
        `tokenizer_config.json` and `special_tokens_map.json`:
        `transformers.AutoTokenizer.from_pretrained(path)` then gives GPT-2's
        tokenizer, with the same ids as this one (for a literal
        `<|endoftext|>` in the text, as this one gives with
        `allowed_special="all"`). `model_max_length` is the `n_positions` of
        a model already exported to `path`, else GPT-2's 1024.

        Args:
            path: the output folder; created if needed.

        Example:
        ```python
        keras_gpt_scratch.GPTTokenizer().export_to_transformers("gpt2-hf")
        transformers.AutoTokenizer.from_pretrained("gpt2-hf")
        ```
        """
        from keras_gpt_scratch.weights import export_tokenizer

        export_tokenizer(self, path)

    def get_vocabulary(self) -> list[str]:
        """Returns the tokens by id, written as in GPT-2's `encoder.json`.

        Bytes are shown with GPT-2's printable byte map, so " world" is
        "Ġworld", exactly as `keras_hub.models.GPT2Tokenizer` shows them.
        """
        return list(self._get_bpe().id_to_token)

    def vocabulary_size(self) -> int:
        """Returns the number of token ids, 50,257."""
        return self.encoding.n_vocab

    def id_to_token(self, id: int) -> str:
        """Returns the `encoder.json` string of token `id` (e.g. "Ġworld")."""
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)):
            raise TypeError(f"`id` must be an int. Received: {id!r}.")
        if not 0 <= id < VOCABULARY_SIZE:
            raise ValueError(
                f"Id {id} is outside GPT-2's vocabulary [0, {VOCABULARY_SIZE})."
            )
        return self._get_bpe().id_to_token[int(id)]

    def token_to_id(self, token: str) -> int:
        """Returns the id of an `encoder.json` token string (e.g. "Ġworld")."""
        if token == END_OF_TEXT:
            # Known without the ranks, so special ids are set at construction.
            return END_OF_TEXT_ID
        token_ids = self._get_bpe().token_to_id
        if token not in token_ids:
            raise ValueError(f"Token {token!r} is not in GPT-2's vocabulary.")
        return token_ids[token]

    def _output_dtype(self) -> str:
        return keras.backend.standardize_dtype(self.compute_dtype)

    def _tokenize_python(
        self, inputs: Any, allowed_special: str | frozenset[str]
    ) -> np.ndarray | list[list[int]]:
        texts, batched = _canonicalize_texts(inputs)
        sequences = _encode_texts(self.encoding, texts, allowed_special)
        dtype = self._output_dtype()
        if self.sequence_length:
            length = self.sequence_length
            padded = np.full((len(sequences), length), self.pad_token_id, dtype)
            for row, sequence in enumerate(sequences):
                sequence = sequence[:length]
                padded[row, : len(sequence)] = sequence
            return padded if batched else padded[0]
        if not batched:
            return np.asarray(sequences[0], dtype=dtype)
        return sequences

    @preprocessing_function
    def _tokenize_tf(self, inputs, allowed_special=frozenset()):
        # Resolved while tracing, so a missing file fails here, not in a
        # tf.data worker.
        encoding = self.encoding
        inputs = tf.convert_to_tensor(inputs)
        if inputs.dtype != tf.string:
            raise TypeError(
                f"`tokenize()` takes string tensors; received dtype {inputs.dtype}."
            )
        rank = inputs.shape.rank
        if rank is None or rank > 1:
            raise ValueError(
                "`tokenize()` takes a string or a 1-D batch of strings; received "
                f"a tensor of shape {inputs.shape}."
            )
        texts = tf.reshape(inputs, [-1])

        def encode(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            decoded = [_decode_utf8(text, i) for i, text in enumerate(batch)]
            sequences = _encode_texts(encoding, decoded, allowed_special)
            lengths = np.fromiter(map(len, sequences), np.int64, len(sequences))
            flat = np.fromiter(
                itertools.chain.from_iterable(sequences),
                np.int32,
                int(lengths.sum()),
            )
            return flat, lengths

        flat, lengths = tf.numpy_function(
            encode, [texts], [tf.int32, tf.int64], stateful=False, name="gpt2_bpe"
        )
        flat = tf.ensure_shape(flat, [None])
        lengths = tf.ensure_shape(lengths, texts.shape)
        tokens = tf.RaggedTensor.from_row_lengths(flat, lengths, validate=False)
        tokens = tf.cast(tokens, self._output_dtype())
        if self.sequence_length:
            tokens = tokens.to_tensor(
                default_value=tf.cast(self.pad_token_id, tokens.dtype),
                shape=[texts.shape[0], self.sequence_length],
            )
        if rank == 0:
            tokens = tokens[0]
            tokens = tf.ensure_shape(tokens, [self.sequence_length])
        return tokens

    def tokenize(
        self, inputs: Any, allowed_special: str | Collection[str] | None = None
    ) -> Any:
        """Converts text to token ids.

        Args:
            inputs: a string, a list of strings, or a string array or tensor
                of rank 0 or 1.
            allowed_special: overrides the layer's `allowed_special` for this
                call.
        """
        if allowed_special is None:
            allowed = self.allowed_special
        else:
            allowed = _normalize_allowed_special(allowed_special)
        if self._use_tf_workflow():
            return self._tokenize_tf(inputs, allowed_special=allowed)
        return self._tokenize_python(inputs, allowed)

    def _detokenize_python(self, inputs: Any) -> str | list[str]:
        sequences, batched = _canonicalize_ids(inputs)
        _check_id_range(sequences)
        encoding = self.encoding
        texts = [encoding.decode(sequence) for sequence in sequences]
        return texts if batched else texts[0]

    @preprocessing_function
    def _detokenize_tf(self, inputs):
        encoding = self.encoding
        inputs, unbatched, _ = convert_to_ragged_batch(inputs)
        inputs = tf.cast(inputs, tf.int64)

        def decode(flat: np.ndarray, row_splits: np.ndarray) -> np.ndarray:
            ids = flat.tolist()
            _check_id_range([ids])
            texts = np.empty(len(row_splits) - 1, dtype=object)
            for row in range(len(texts)):
                sequence = ids[row_splits[row] : row_splits[row + 1]]
                # `decode` replaces bytes that are not valid UTF-8 with U+FFFD,
                # like the eager path.
                texts[row] = encoding.decode(sequence).encode("utf-8")
            return texts

        texts = tf.numpy_function(
            decode,
            [inputs.flat_values, inputs.row_splits],
            tf.string,
            stateful=False,
            name="gpt2_bpe_decode",
        )
        texts = tf.ensure_shape(texts, [inputs.shape[0]])
        if unbatched:
            texts = tf.squeeze(texts, 0)
        return texts

    def detokenize(self, inputs: Any) -> Any:
        """Converts token ids back to text, special tokens included.

        Nothing is stripped: padding and `<|endoftext|>` ids come back as
        the text `<|endoftext|>`. Byte sequences that are not valid UTF-8
        (an id sequence cut inside a character) become U+FFFD.

        Args:
            inputs: an id, a 1-D sequence of ids (gives a string) or a batch
                of sequences (gives a list of strings, or a string tensor
                inside a `tf.function`).
        """
        if self._use_tf_workflow():
            return self._detokenize_tf(inputs)
        return self._detokenize_python(inputs)

    def encode(
        self, text: str, allowed_special: str | Collection[str] | None = None
    ) -> list[int]:
        """tiktoken-style encoding of one string to a list of ids.

        The same ids as `tokenize(text)`, as a plain list, in eager Python
        only (the book's `tokenizer.encode(text)`).
        """
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str. Received: {type(text).__name__}.")
        if allowed_special is None:
            allowed = self.allowed_special
        else:
            allowed = _normalize_allowed_special(allowed_special)
        return _encode_texts(self.encoding, [text], allowed)[0]

    def decode(self, ids: Any) -> str:
        """tiktoken-style decoding of a 1-D sequence of ids to a string."""
        sequences, batched = _canonicalize_ids(ids)
        if batched:
            raise ValueError(
                "`decode()` takes one sequence of ids; use `detokenize()` for a batch."
            )
        return self._detokenize_python(sequences[0])

    def call(self, inputs, *args, training=None, **kwargs):
        return self.tokenize(inputs, *args, **kwargs)

    def compute_output_spec(self, input_spec):
        return keras.KerasTensor(
            input_spec.shape + (self.sequence_length,), dtype=self.compute_dtype
        )

    def get_config(self) -> dict:
        config = super().get_config()
        allowed = self.allowed_special
        config.update(
            {
                "ranks_path": self.ranks_path,
                "sequence_length": self.sequence_length,
                "allowed_special": allowed if allowed == "all" else sorted(allowed),
            }
        )
        return config
