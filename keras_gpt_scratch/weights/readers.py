"""Readers for GPT-2's two published checkpoint formats.

* OpenAI's original TensorFlow checkpoint folder, as the book's
  `gpt_download.py` fetches it: `checkpoint`, `model.ckpt.*`, `hparams.json`
  (and `encoder.json`, `vocab.bpe`). Read with `tf.train.load_checkpoint`.
* Hugging Face's folder: `config.json` (`model_type: gpt2`) and
  `model.safetensors` (or shards listed in `model.safetensors.index.json`),
  local or on the Hub (`hf://openai-community/gpt2`). Read with safetensors'
  NumPy API: no pickle and no torch.

Both give a `GPT2Checkpoint`: the geometry from the checkpoint's own config,
and tensors by canonical (OpenAI) name, read lazily one at a time so the
1558M model never needs two copies of itself in memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from keras_gpt_scratch.weights import names
from keras_gpt_scratch.weights.config import CheckpointError, DownloadError, GPT2Config

HF_SCHEME = "hf://"
OPENAI_FORMAT = "openai"
TRANSFORMERS_FORMAT = "transformers"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"

_EXPECTED_LAYOUTS = (
    "OpenAI's TF checkpoint folder (hparams.json, checkpoint, "
    "model.ckpt.index, model.ckpt.data-*), or a Hugging Face GPT-2 folder "
    "(config.json with model_type 'gpt2', and model.safetensors or "
    "model.safetensors.index.json)"
)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}).") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object ({what}).")
    return data


class GPT2Checkpoint:
    """A GPT-2 checkpoint opened for reading.

    Get one from `read_gpt2_checkpoint()`. Tensors are addressed by canonical
    name (see `keras_gpt_scratch.weights.names`) and come back as NumPy
    arrays in OpenAI's layout, whatever the file's format.

    Attributes:
        format: `"openai"` or `"transformers"`.
        config: the `GPT2Config` read from the checkpoint's own config file.
        directory: the local folder holding the files.
        source: what the caller passed (a path or an `hf://` handle).
        config_file: the config file the geometry came from.
    """

    format: str = ""

    def __init__(self, directory: Path, source: str, config_file: Path):
        self.directory = Path(directory)
        self.source = source
        self.config_file = Path(config_file)
        self.config: GPT2Config
        self._stack = contextlib.ExitStack()
        # canonical name -> name in the file
        self._file_names: dict[str, str] = {}

    # --- what subclasses provide ---

    def _raw_shape(self, canonical: str) -> tuple[int, ...]:
        raise NotImplementedError

    def _raw_tensor(self, canonical: str) -> np.ndarray:
        raise NotImplementedError

    def _expected_raw_shape(
        self, canonical: str, shape: tuple[int, ...], raw: tuple[int, ...]
    ) -> tuple[int, ...]:
        return shape

    # --- public API ---

    @property
    def names(self) -> list[str]:
        """Canonical names of the tensors the model needs, in model order."""
        return names.canonical_names(
            self.config.n_layer, self.config.tie_word_embeddings
        )

    def file_name(self, canonical: str) -> str:
        """The tensor's name in the file, e.g. `model/h0/ln_1/g`."""
        return self._file_names.get(canonical, canonical)

    def shape(self, canonical: str) -> tuple[int, ...]:
        """The tensor's shape in OpenAI's layout (OpenAI's leading 1 squeezed)."""
        shape = self._raw_shape(canonical)
        if len(shape) == 3 and shape[0] == 1 and canonical.endswith("/w"):
            return shape[1:]
        return shape

    def tensor(self, canonical: str) -> np.ndarray:
        """Reads one tensor, in OpenAI's layout, in the file's dtype."""
        array = np.asarray(self._raw_tensor(canonical))
        if array.ndim == 3 and array.shape[0] == 1 and canonical.endswith("/w"):
            # OpenAI's conv1d weights are (1, in, out).
            array = array[0]
        return array

    def validate(self) -> None:
        """Checks that the tensors are exactly those the config implies.

        Raises:
            CheckpointError: naming the first missing, extra or misshapen
                tensor, with its shape and the shape the config implies.
        """
        expected = names.expected_shapes(self.config)
        present = set(self._file_names)
        missing = [n for n in expected if n not in present]
        geometry = (
            f"n_layer={self.config.n_layer}, n_embd={self.config.n_embd}, "
            f"vocab={self.config.vocab_size}, context={self.config.n_positions}"
        )
        extra = sorted(present - set(expected))
        if extra:
            shown = ", ".join(self.file_name(n) for n in extra[:5])
            raise CheckpointError(
                f"{self.source} holds tensors that a GPT-2 with {geometry} (from "
                f"{self.config_file.name}) does not have: {shown}"
                f"{' ...' if len(extra) > 5 else ''}. The weights and "
                f"{self.config_file.name} disagree."
            )
        if missing:
            shown = ", ".join(self._display_name(n) for n in missing[:5])
            raise CheckpointError(
                f"{self.source} lacks {len(missing)} tensor(s) that a GPT-2 with "
                f"{geometry} (from {self.config_file.name}) needs: {shown}"
                f"{' ...' if len(missing) > 5 else ''}."
            )
        for canonical, shape in expected.items():
            raw = self._raw_shape(canonical)
            if self.shape(canonical) != shape:
                raise CheckpointError(
                    f"{self.source}: tensor {self.file_name(canonical)} has shape "
                    f"{raw}, but {self.config_file.name} ({geometry}) implies "
                    f"{self._expected_raw_shape(canonical, shape, raw)}. The "
                    f"weights and {self.config_file.name} disagree."
                )

    def _display_name(self, canonical: str) -> str:
        return canonical

    def tokenizer_dir(self) -> Path | None:
        """The folder's `encoder.json` + `vocab.bpe`, when it ships them."""
        if (self.directory / "encoder.json").is_file() and (
            self.directory / "vocab.bpe"
        ).is_file():
            return self.directory
        return None

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> GPT2Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"<GPT2Checkpoint {self.format} {self.source!r}: {c.n_layer} layers, "
            f"{c.n_head} heads, width {c.n_embd}, context {c.n_positions}, "
            f"vocab {c.vocab_size}>"
        )


class OpenAICheckpoint(GPT2Checkpoint):
    """OpenAI's original TensorFlow checkpoint folder."""

    format = OPENAI_FORMAT

    def __init__(self, directory: Path, source: str):
        directory = Path(directory)
        super().__init__(directory, source, directory / "hparams.json")
        hparams = _read_json(self.config_file, "OpenAI's hparams")
        self.config = GPT2Config.from_openai_hparams(hparams, str(self.config_file))

        import tensorflow as tf

        prefix = tf.train.latest_checkpoint(str(directory))
        if prefix is None:
            indexes = sorted(directory.glob("*.index"))
            if len(indexes) != 1:
                raise CheckpointError(
                    f"{directory} has hparams.json but no TF checkpoint: expected "
                    "a `checkpoint` file naming it, or one `model.ckpt.index` "
                    f"(found {[p.name for p in indexes]})."
                )
            prefix = str(indexes[0])[: -len(".index")]
        self.prefix = prefix
        try:
            self._reader = tf.train.load_checkpoint(prefix)
            shapes = self._reader.get_variable_to_shape_map()
        except (tf.errors.OpError, ValueError) as error:
            raise CheckpointError(
                f"Cannot read the TF checkpoint {prefix} ({type(error).__name__}: "
                f"{error}). It may be truncated or corrupt; download it again."
            ) from error
        self._shapes = {name: tuple(int(d) for d in s) for name, s in shapes.items()}
        for name in self._shapes:
            canonical = names.from_openai_name(name)
            # Anything outside `model/` (a global step, optimizer slots) is
            # training state, not part of the network.
            if canonical is not None:
                self._file_names[canonical] = name

    def _raw_shape(self, canonical: str) -> tuple[int, ...]:
        return self._shapes[self._file_names[canonical]]

    def _raw_tensor(self, canonical: str) -> np.ndarray:
        import tensorflow as tf

        try:
            return self._reader.get_tensor(self._file_names[canonical])
        # A short data file surfaces as IndexError ("Read less bytes than
        # requested") from TF's reader, other damage as an OpError.
        except (tf.errors.OpError, IndexError, ValueError, RuntimeError) as error:
            raise CheckpointError(
                f"Cannot read {self._file_names[canonical]} from {self.prefix} "
                f"({error}). The checkpoint data is truncated or corrupt."
            ) from error

    def _expected_raw_shape(self, canonical, shape, raw):
        # OpenAI's conv1d weights carry a leading 1: (1, in, out).
        if canonical.endswith("/w") and len(raw) == 3:
            return (1, *shape)
        return shape

    def _display_name(self, canonical: str) -> str:
        return names.openai_name(canonical)


class TransformersCheckpoint(GPT2Checkpoint):
    """A Hugging Face GPT-2 folder: config.json + safetensors."""

    format = TRANSFORMERS_FORMAT

    def __init__(
        self,
        directory: Path,
        source: str,
        weight_files: list[Path] | None = None,
    ):
        from safetensors import SafetensorError, safe_open

        directory = Path(directory)
        super().__init__(directory, source, directory / "config.json")
        raw_config = _read_json(self.config_file, "a transformers config")
        self.transformers_config = raw_config
        self.config = GPT2Config.from_transformers(raw_config, str(self.config_file))
        if weight_files is None:
            weight_files = _local_weight_files(directory)
        self.weight_files = weight_files
        self._handles: dict[str, Any] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        unknown = []
        for path in weight_files:
            try:
                handle = self._stack.enter_context(
                    safe_open(str(path), framework="numpy")
                )
                keys = list(handle.keys())
            except (SafetensorError, OSError, ValueError) as error:
                self.close()
                raise CheckpointError(
                    f"{path} is not a readable safetensors file ({error}). It "
                    "may be truncated or corrupt; download it again."
                ) from error
            for key in keys:
                if names.is_hf_buffer(key):
                    continue
                canonical = names.from_hf_name(key)
                if canonical is None:
                    unknown.append(key)
                    continue
                self._file_names[canonical] = key
                self._handles[canonical] = handle
                self._shapes[canonical] = tuple(handle.get_slice(key).get_shape())
        if unknown:
            # Heads of other GPT-2 tasks (e.g. GPT2DoubleHeadsModel's
            # multiple-choice head); transformers ignores them too.
            warnings.warn(
                f"{source}: ignoring {len(unknown)} tensor(s) that are not part of "
                f"GPT-2's language model: {', '.join(unknown[:5])}",
                UserWarning,
                stacklevel=3,
            )
        self._check_lm_head()

    def _check_lm_head(self) -> None:
        if names.LM_HEAD not in self._file_names or not (
            self.config.tie_word_embeddings
        ):
            return
        # A tied model saved with its head: transformers ties lm_head to wte
        # on load, so a head that differs would be silently dropped there.
        head_shape = self._shapes[names.LM_HEAD]
        if "wte" in self._file_names and head_shape == self._shapes["wte"]:
            if np.array_equal(self._raw_tensor(names.LM_HEAD), self._raw_tensor("wte")):
                del self._file_names[names.LM_HEAD]
                return
        raise CheckpointError(
            f"{self.source}: config.json says tie_word_embeddings=true, but "
            "lm_head.weight differs from wte.weight. Set tie_word_embeddings to "
            "false in config.json to load the separate head."
        )

    def _raw_shape(self, canonical: str) -> tuple[int, ...]:
        return self._shapes[canonical]

    def _raw_tensor(self, canonical: str) -> np.ndarray:
        from safetensors import SafetensorError

        try:
            return self._handles[canonical].get_tensor(self._file_names[canonical])
        except (SafetensorError, OSError, TypeError) as error:
            raise CheckpointError(
                f"Cannot read {self._file_names[canonical]} from {self.source} "
                f"({error})."
            ) from error

    def _display_name(self, canonical: str) -> str:
        prefix = (
            names.HF_PREFIX
            if any(k.startswith(names.HF_PREFIX) for k in self._file_names.values())
            else ""
        )
        return names.hf_name(canonical, prefix)


def _local_weight_files(directory: Path) -> list[Path]:
    single = directory / SAFETENSORS_FILE
    if single.is_file():
        return [single]
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = _read_json(index, "a safetensors index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no weight_map.")
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are missing: {missing}.")
        return files
    hint = ""
    if (directory / "pytorch_model.bin").exists():
        hint = (
            " It has pytorch_model.bin, which is not read: unpickling can run "
            "arbitrary code. Convert it to safetensors first."
        )
    raise CheckpointError(
        f"{directory} has config.json but no {SAFETENSORS_FILE} or "
        f"{SAFETENSORS_INDEX}.{hint}"
    )


def checkpoint_format(path: str | os.PathLike) -> str | None:
    """Which GPT-2 checkpoint format a local folder holds.

    Returns:
        `"openai"` (has `hparams.json`), `"transformers"` (has a
        `config.json` with `model_type: gpt2`), or `None` (anything else,
        e.g. a Keras preset, whose `config.json` has `registered_name`).
    """
    directory = Path(path)
    if not directory.is_dir():
        return None
    if (directory / "hparams.json").is_file():
        return OPENAI_FORMAT
    config = directory / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None
        if isinstance(data, dict) and data.get("model_type") == "gpt2":
            return TRANSFORMERS_FORMAT
    return None


def _hf_download(repo_id: str, filename: str) -> str:
    """Downloads one file of a Hub repo (huggingface_hub's cache and progress).

    huggingface_hub writes into `*.incomplete` files and renames them when
    complete, so a download that dies midway leaves no file that passes for
    a good one. Tests replace this function to simulate failures.
    """
    import huggingface_hub

    return huggingface_hub.hf_hub_download(repo_id=repo_id, filename=filename)


def _is_missing_remote_file(error: Exception) -> bool:
    from huggingface_hub.errors import RemoteEntryNotFoundError

    return isinstance(error, RemoteEntryNotFoundError)


def _download(repo_id: str, filename: str) -> str:
    """`_hf_download`, with failures turned into one clear `DownloadError`.

    A file missing from the repo is re-raised as is (callers probe for
    optional files).
    """
    try:
        return _hf_download(repo_id, filename)
    except Exception as error:
        if _is_missing_remote_file(error):
            raise
        raise DownloadError(
            f"Downloading {filename} from hf://{repo_id} failed "
            f"({type(error).__name__}: {error}). Nothing incomplete was kept; "
            "check the network, HF_ENDPOINT and your token, then try again "
            "(with HF_HUB_OFFLINE=1 only files already cached are used)."
        ) from error


def hf_repo_id(handle: str) -> str:
    """`hf://owner/name` -> `owner/name` (checked)."""
    repo_id = handle[len(HF_SCHEME) :].strip("/")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise CheckpointError(
            f"Hugging Face handles look like 'hf://owner/name'; got {handle!r}."
        )
    return repo_id


def hf_config(handle: str) -> dict[str, Any]:
    """Downloads (or reads from the Hub cache) a repo's `config.json`."""
    path = Path(_download(hf_repo_id(handle), "config.json"))
    return _read_json(path, "a config")


def is_gpt2_checkpoint(preset: str | os.PathLike) -> bool:
    """Whether `preset` is a GPT-2 checkpoint we convert ourselves.

    True for a local folder in OpenAI's or Hugging Face's format, and for an
    `hf://` repo whose `config.json` has `model_type: gpt2` (keras_hub would
    map those to its own `GPT2Backbone`). A Keras preset (local or on the
    Hub) gives False, so keras_hub's loader handles it.
    """
    preset = os.fspath(preset)
    if preset.startswith(HF_SCHEME):
        return hf_config(preset).get("model_type") == "gpt2"
    if "://" in preset:
        return False
    return checkpoint_format(preset) is not None


def _download_hf_checkpoint(handle: str) -> tuple[Path, list[Path]]:
    repo_id = hf_repo_id(handle)
    config_path = Path(_download(repo_id, "config.json"))
    try:
        weights = [Path(_download(repo_id, SAFETENSORS_FILE))]
    except Exception as error:
        if not _is_missing_remote_file(error):
            raise
        try:
            index = Path(_download(repo_id, SAFETENSORS_INDEX))
        except Exception as index_error:
            if not _is_missing_remote_file(index_error):
                raise
            raise CheckpointError(
                f"{handle} has no {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX}. Only "
                "safetensors weights are read (pytorch_model.bin is a pickle, "
                "which can run code)."
            ) from None
        weight_map = _read_json(index, "a safetensors index").get("weight_map", {})
        weights = [
            Path(_download(repo_id, name))
            for name in dict.fromkeys(weight_map.values())
        ]
    # hf_hub_download puts every file of a revision in one snapshot folder.
    return config_path.parent, weights


def read_gpt2_checkpoint(source: str | os.PathLike) -> GPT2Checkpoint:
    """Opens a GPT-2 checkpoint in either published format, and checks it.

    Args:
        source: a local folder (OpenAI's TF checkpoint folder or a Hugging
            Face folder), or a Hub handle `hf://owner/name` (downloaded
            through `huggingface_hub`, with its progress bar and cache).

    Returns:
        A `GPT2Checkpoint` whose tensors match its config (call `close()`
        or use it as a context manager when done).

    Raises:
        CheckpointError: the folder is neither format (the message lists what
            was expected), a file is truncated or corrupt, or the tensors
            disagree with the config (naming the tensor and both shapes).

    Example:
    ```python
    with read_gpt2_checkpoint("hf://openai-community/gpt2") as ckpt:
        print(ckpt.config.n_layer, ckpt.tensor("wte").shape)  # 12 (50257, 768)
    ```
    """
    source = os.fspath(source)
    if source.startswith(HF_SCHEME):
        directory, weights = _download_hf_checkpoint(source)
        checkpoint = TransformersCheckpoint(directory, source, weights)
    else:
        directory = Path(source).expanduser()
        if not directory.is_dir():
            raise CheckpointError(
                f"{source} is not a folder. Expected {_EXPECTED_LAYOUTS}, or an "
                "hf://owner/name handle."
            )
        fmt = checkpoint_format(directory)
        if fmt == OPENAI_FORMAT:
            checkpoint = OpenAICheckpoint(directory, source)
        elif fmt == TRANSFORMERS_FORMAT:
            checkpoint = TransformersCheckpoint(directory, source)
        else:
            found = sorted(p.name for p in directory.iterdir())[:12]
            raise CheckpointError(
                f"{source} is not a GPT-2 checkpoint. Expected {_EXPECTED_LAYOUTS}. "
                f"Found: {found or 'an empty folder'}."
            )
    try:
        checkpoint.validate()
    except BaseException:
        checkpoint.close()
        raise
    return checkpoint
