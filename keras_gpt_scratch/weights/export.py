"""Writing GPT-2 checkpoints: Hugging Face folders, and OpenAI's TF format."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from keras_gpt_scratch import paths
from keras_gpt_scratch.io_utils import atomic_file
from keras_gpt_scratch.weights import names
from keras_gpt_scratch.weights.config import (
    GPT2_VOCABULARY_SIZE,
    CheckpointError,
    GPT2Config,
)
from keras_gpt_scratch.weights.convert import backbone_tensors

END_OF_TEXT = "<|endoftext|>"
MERGES_HEADER = "#version: 0.2"


def _write_json(path: Path, data: Any) -> None:
    paths.write_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def write_transformers_checkpoint(
    tensors: dict[str, np.ndarray],
    config: GPT2Config,
    directory: str | os.PathLike,
    prefix: str = names.HF_PREFIX,
) -> Path:
    """Writes `config.json` + `model.safetensors` for `GPT2LMHeadModel`.

    Args:
        tensors: canonical name -> array in OpenAI's layout (see
            `keras_gpt_scratch.weights.names`).
        config: the geometry, written as the `config.json`.
        directory: the folder; created if needed. Existing files of the same
            names are replaced, each atomically; other files are left alone.
            A keras_hub preset folder (with `metadata.json`) is refused.
        prefix: put before every name but `lm_head.weight`;
            `"transformer."` is what `GPT2LMHeadModel.save_pretrained` writes.

    Returns:
        The folder, as a `Path`.
    """
    from safetensors.numpy import save_file

    directory = Path(directory)
    if (directory / "metadata.json").exists():
        # keras_hub's presets have a config.json of their own.
        raise ValueError(
            f"{directory} is a keras_hub preset (it has metadata.json); writing "
            "a Hugging Face checkpoint there would replace its config.json. "
            "Export to another folder."
        )
    directory.mkdir(parents=True, exist_ok=True)
    expected = names.expected_shapes(config)
    if set(tensors) != set(expected):
        raise CheckpointError(
            "The tensors do not match the config: missing "
            f"{sorted(set(expected) - set(tensors))[:5]}, extra "
            f"{sorted(set(tensors) - set(expected))[:5]}."
        )
    hf_tensors = {
        names.hf_name(name, prefix): np.ascontiguousarray(array)
        for name, array in tensors.items()
    }
    with atomic_file(directory / "model.safetensors") as tmp:
        # "format": "pt" is how transformers recognises a PyTorch-layout file.
        save_file(hf_tensors, tmp, metadata={"format": "pt"})
    _write_json(directory / "config.json", config.to_transformers())
    return directory


def gpt2_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recovers GPT-2's merge list (`vocab.bpe`) from its BPE ranks.

    Each token of rank `r` (above the 256 single bytes) was made by one merge;
    running BPE on its bytes with only the merges ranked below `r` stops at
    exactly the two halves that merge joined (the recovery `transformers`
    uses to convert tiktoken vocabularies).
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [bytes([byte]) for byte in token]
        while len(parts) > 2:
            best, best_rank = None, rank
            for i in range(len(parts) - 1):
                pair_rank = ranks.get(parts[i] + parts[i + 1])
                if pair_rank is not None and pair_rank < best_rank:
                    best, best_rank = i, pair_rank
            if best is None:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2:
            raise ValueError(f"Cannot recover the merge that made token {token!r}.")
        merges.append((parts[0], parts[1]))
    return merges


def write_tokenizer_files(
    tokenizer: Any, directory: str | os.PathLike, model_max_length: int = 1024
) -> None:
    """Writes GPT-2's tokenizer in `transformers`' layout.

    `vocab.json` and `merges.txt` are regenerated from the `GPTTokenizer`'s
    ranks (wherever they came from: the package's copy, a preset's assets,
    ...); for GPT-2 they are byte-identical to OpenAI's `encoder.json` and
    `vocab.bpe`. `tokenizer_config.json` and `special_tokens_map.json` make
    `AutoTokenizer.from_pretrained` give a `GPT2Tokenizer(Fast)`.

    Args:
        tokenizer: a `GPTTokenizer`.
        directory: the folder to write into.
        model_max_length: the context length to record.
    """
    from keras_gpt_scratch.tokenizers.gpt_tokenizer import _bytes_to_unicode

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bpe = tokenizer._get_bpe()  # noqa: SLF001 - the ranks live there
    vocabulary = {token: index for index, token in enumerate(bpe.id_to_token)}
    # json.dumps' default separators are the ones OpenAI used.
    paths.write_atomic(directory / "vocab.json", json.dumps(vocabulary).encode())
    byte_map = _bytes_to_unicode()

    def show(part: bytes) -> str:
        return "".join(byte_map[b] for b in part)

    lines = [MERGES_HEADER] + [
        f"{show(a)} {show(b)}" for a, b in gpt2_merges(bpe.ranks)
    ]
    paths.write_atomic(directory / "merges.txt", ("\n".join(lines) + "\n").encode())
    special = {
        "bos_token": END_OF_TEXT,
        "eos_token": END_OF_TEXT,
        "unk_token": END_OF_TEXT,
    }
    _write_json(
        directory / "tokenizer_config.json",
        {
            **special,
            "add_prefix_space": False,
            "model_max_length": model_max_length,
            "tokenizer_class": "GPT2Tokenizer",
        },
    )
    _write_json(directory / "special_tokens_map.json", special)


def export_backbone(backbone: Any, path: str | os.PathLike) -> Path:
    """Writes a `GPTBackbone`'s weights as a Hugging Face GPT-2 model folder.

    Writes `config.json`, `model.safetensors` (float32, names as
    `GPT2LMHeadModel.save_pretrained` writes them) and
    `generation_config.json`: what `GPT2LMHeadModel.from_pretrained(path)`
    reads. No tokenizer files (`export_tokenizer` writes those).

    Untied heads (`tie_weights=False`, the book's `out_head`) are exported
    too: `config.json` gets `tie_word_embeddings: false` and the head is
    written as `lm_head.weight`, which `GPT2LMHeadModel` then loads instead
    of reusing `wte`. A model built with `qkv_bias=False` gets zero `c_attn`
    biases (the same function).

    Args:
        backbone: a `GPTBackbone`.
        path: the output folder; created if needed. The files above are
            replaced, each atomically; other files in it are left alone.

    Returns:
        The folder, as a `Path`.
    """
    config = GPT2Config.from_backbone(backbone)
    path = Path(path)
    write_transformers_checkpoint(backbone_tensors(backbone), config, path)
    end = config.end_of_text_id
    _write_json(
        path / "generation_config.json", {"bos_token_id": end, "eos_token_id": end}
    )
    # Tokenizer files already there (exported first) get this context length.
    tokenizer_config = path / "tokenizer_config.json"
    if tokenizer_config.exists():
        settings = json.loads(tokenizer_config.read_text(encoding="utf-8"))
        settings["model_max_length"] = config.n_positions
        _write_json(tokenizer_config, settings)
    return path


def export_tokenizer(
    tokenizer: Any, path: str | os.PathLike, model_max_length: int | None = None
) -> Path:
    """Writes a `GPTTokenizer` as Hugging Face GPT-2 tokenizer files.

    `vocab.json`, `merges.txt`, `tokenizer_config.json` and
    `special_tokens_map.json`, which `AutoTokenizer.from_pretrained(path)`
    loads as GPT-2's tokenizer (see `write_tokenizer_files`).

    Args:
        tokenizer: a `GPTTokenizer`.
        path: the output folder; created if needed.
        model_max_length: the context length `tokenizer_config.json` records.
            Defaults to `n_positions` of a `config.json` already in `path`
            (the model exported first), else GPT-2's 1024; `export_backbone`
            also updates it when the tokenizer was exported first.

    Returns:
        The folder, as a `Path`.
    """
    from keras_gpt_scratch.tokenizers.gpt_tokenizer import GPTTokenizer

    if not isinstance(tokenizer, GPTTokenizer):
        raise ValueError(
            "Only a GPTTokenizer (GPT-2's byte-pair encoding) can be exported "
            f"to transformers' GPT-2 tokenizer files; got "
            f"{type(tokenizer).__name__}. Export the model's weights alone "
            "with `backbone.export_to_transformers(path)`."
        )
    path = Path(path)
    if model_max_length is None:
        model_max_length = 1024
        model_config = path / "config.json"
        if model_config.exists():
            settings = json.loads(model_config.read_text(encoding="utf-8"))
            model_max_length = settings.get("n_positions", model_max_length)
    write_tokenizer_files(tokenizer, path, model_max_length)
    return path


def export_to_transformers(model: Any, path: str | os.PathLike) -> Path:
    """Writes a `GPTCausalLM` (or `GPTBackbone`) as a Hugging Face GPT-2 folder.

    The folder holds what `export_backbone` writes (`config.json`,
    `model.safetensors`, `generation_config.json`) and GPT-2's tokenizer
    files, and loads with `transformers.GPT2LMHeadModel.from_pretrained(path)`,
    giving the same logits, and with `AutoTokenizer.from_pretrained(path)`.
    The tokenizer files are written when the model's tokenizer is a
    `GPTTokenizer` (or it has no preprocessor) and its vocabulary covers
    GPT-2's 50,257 ids; otherwise they are skipped with a warning.

    Args:
        model: a `GPTCausalLM` or `GPTBackbone`.
        path: the output folder; created if needed. The files above are
            replaced, each atomically; other files in it are left alone.

    Returns:
        The folder, as a `Path`.
    """
    from keras_gpt_scratch.tokenizers.gpt_tokenizer import GPTTokenizer

    backbone = getattr(model, "backbone", model)
    config = GPT2Config.from_backbone(backbone)
    path = export_backbone(backbone, path)
    preprocessor = getattr(model, "preprocessor", None)
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if tokenizer is None and config.vocab_size >= GPT2_VOCABULARY_SIZE:
        tokenizer = GPTTokenizer()
    if (
        isinstance(tokenizer, GPTTokenizer)
        and config.vocab_size >= GPT2_VOCABULARY_SIZE
    ):
        export_tokenizer(tokenizer, path, config.n_positions)
    else:
        warnings.warn(
            f"Tokenizer files not exported to {path}: the model's vocabulary "
            f"({config.vocab_size} ids, tokenizer {type(tokenizer).__name__}) is "
            "not GPT-2's. Only the model files (config.json, model.safetensors, "
            "generation_config.json) were written.",
            UserWarning,
            stacklevel=2,
        )
    return path


def write_openai_checkpoint(
    tensors: dict[str, np.ndarray],
    config: GPT2Config,
    directory: str | os.PathLike,
) -> Path:
    """Writes tensors as OpenAI's original TF checkpoint folder.

    Variables get OpenAI's exact names (`model/wte`, `model/h0/attn/c_attn/w`
    with its leading 1, ...), written with `tf.raw_ops.SaveV2` because
    `tf.train.Checkpoint` would rename them after the object graph. Also
    writes the `checkpoint` index file and `hparams.json`, so the folder
    reads back exactly like one `gpt_download.py` fetched (minus the BPE
    files and `model.ckpt.meta`).

    Args:
        tensors: canonical name -> array, as from `backbone_tensors`.
        config: the geometry; must be GPT-2's layout (tied head, n_inner
            4 * n_embd, epsilon 1e-5), all `hparams.json` can describe.
        directory: the folder; created if needed.

    Returns:
        The folder, as a `Path`.
    """
    import tensorflow as tf

    hparams = config.to_openai_hparams()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    variable_names, values = [], []
    for name, array in tensors.items():
        if name.endswith("/w"):
            array = array[None]  # OpenAI's conv1d weights are (1, in, out)
        variable_names.append(names.openai_name(name))
        values.append(tf.constant(array))
    tf.raw_ops.SaveV2(
        prefix=str(directory / "model.ckpt"),
        tensor_names=variable_names,
        shape_and_slices=[""] * len(values),
        tensors=values,
    )
    paths.write_atomic(
        directory / "checkpoint",
        b'model_checkpoint_path: "model.ckpt"\n'
        b'all_model_checkpoint_paths: "model.ckpt"\n',
    )
    _write_json(directory / "hparams.json", hparams)
    return directory
