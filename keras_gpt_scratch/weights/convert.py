"""GPT-2 checkpoints to `GPTBackbone` / `GPTCausalLM`, and back to tensors."""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np
from tqdm.auto import tqdm

from keras_gpt_scratch.weights import names
from keras_gpt_scratch.weights.config import (
    GPT2_VOCABULARY_SIZE,
    CheckpointError,
    GPT2Config,
)
from keras_gpt_scratch.weights.readers import GPT2Checkpoint, read_gpt2_checkpoint


def _progress(iterable, total: int, desc: str, progress: bool):
    # `disable=None` lets tqdm hide the bar when stderr is not a terminal.
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit="tensor",
        disable=None if progress else True,
    )


def load_checkpoint_weights(
    backbone: Any, checkpoint: GPT2Checkpoint, progress: bool = True
) -> None:
    """Copies every tensor of `checkpoint` into `backbone`'s variables.

    Args:
        backbone: a built `GPTBackbone` with the checkpoint's geometry.
        checkpoint: an open, validated `GPT2Checkpoint`.
        progress: show a progress bar (one step per tensor).

    Raises:
        CheckpointError: a tensor does not fit its variable (the backbone was
            built with another geometry), naming both shapes.
    """
    config = checkpoint.config
    targets = names.keras_targets(backbone, config.n_layer, config.tie_word_embeddings)
    desc = f"Converting GPT-2 weights ({checkpoint.format})"
    for name in _progress(checkpoint.names, len(checkpoint.names), desc, progress):
        array = checkpoint.tensor(name)
        variables = targets[name]
        if name == names.LM_HEAD:
            array = array.T  # (V, C) -> Keras' (C, V) reverse embeddings
        # c_attn holds query, key and value side by side: (C, 3C) / (3C,).
        parts = np.split(array, len(variables), axis=-1)
        for variable, part in zip(variables, parts, strict=True):
            if tuple(variable.shape) != part.shape:
                raise CheckpointError(
                    f"Tensor {checkpoint.file_name(name)} gives shape {part.shape} "
                    f"for {variable.path}, which has shape {tuple(variable.shape)}."
                )
            variable.assign(part)


def backbone_from_checkpoint(
    checkpoint: GPT2Checkpoint | str | os.PathLike,
    load_weights: bool = True,
    progress: bool = True,
    **kwargs,
):
    """Builds a `GPTBackbone` with a GPT-2 checkpoint's geometry and weights.

    Args:
        checkpoint: an open `GPT2Checkpoint`, or anything
            `read_gpt2_checkpoint` takes (a folder or an `hf://` handle).
        load_weights: copy the weights (else only the geometry is used).
        progress: show a progress bar while converting.
        **kwargs: `GPTBackbone` arguments that override the checkpoint's, e.g.
            `dtype="bfloat16"` or `dropout=0.0`.

    Returns:
        A `GPTBackbone`.
    """
    from keras_gpt_scratch.models.gpt_backbone import GPTBackbone

    if not isinstance(checkpoint, GPT2Checkpoint):
        with read_gpt2_checkpoint(checkpoint) as opened:
            return backbone_from_checkpoint(opened, load_weights, progress, **kwargs)
    backbone = GPTBackbone(**{**checkpoint.config.backbone_kwargs(), **kwargs})
    if load_weights:
        load_checkpoint_weights(backbone, checkpoint, progress)
    return backbone


def default_preprocessor(checkpoint: GPT2Checkpoint, **kwargs):
    """A `GPTCausalLMPreprocessor` for a converted checkpoint.

    `GPTTokenizer` only speaks GPT-2's BPE. When the folder ships OpenAI's
    `encoder.json` + `vocab.bpe`, they are checked to be GPT-2's (by SHA-256)
    so that a model trained on another vocabulary is not silently paired
    with this one; the ranks themselves come from the usual places.
    """
    from keras_gpt_scratch import paths
    from keras_gpt_scratch.models.gpt_causal_lm_preprocessor import (
        GPTCausalLMPreprocessor,
    )
    from keras_gpt_scratch.tokenizers.gpt_tokenizer import (
        GPTTokenizer,
        load_gpt2_bpe,
    )

    config = checkpoint.config
    if config.vocab_size < GPT2_VOCABULARY_SIZE:
        raise CheckpointError(
            f"{checkpoint.source} has a vocabulary of {config.vocab_size} tokens; "
            f"GPTTokenizer produces GPT-2's {GPT2_VOCABULARY_SIZE} ids. Pass "
            "preprocessor=None to load it anyway and feed token ids yourself."
        )
    vocab_dir = checkpoint.tokenizer_dir()
    if vocab_dir is not None:
        try:
            load_gpt2_bpe(vocab_dir)
        except paths.ChecksumError as error:
            raise CheckpointError(
                f"{checkpoint.source} ships a vocabulary (encoder.json, vocab.bpe) "
                f"that is not GPT-2's, which GPTTokenizer requires: {error}"
            ) from error
    kwargs.setdefault("sequence_length", config.n_positions)
    return GPTCausalLMPreprocessor(tokenizer=GPTTokenizer(), **kwargs)


def from_gpt2_checkpoint(
    cls: type,
    source: GPT2Checkpoint | str | os.PathLike,
    load_weights: bool = True,
    progress: bool = True,
    **kwargs,
):
    """Builds `cls` (`GPTBackbone` or `GPTCausalLM`) from a GPT-2 checkpoint.

    This is what `from_preset` does with an OpenAI or Hugging Face GPT-2
    folder and with `hf://` GPT-2 repos.

    Args:
        cls: `GPTBackbone`, `GPTCausalLM`, or a subclass.
        source: an open `GPT2Checkpoint`, a folder, or an `hf://` handle.
        load_weights: copy the weights; with False only the config is used.
        progress: show a progress bar while converting.
        **kwargs: for `GPTCausalLM`, `preprocessor` (default: GPT-2's
            tokenizer, `sequence_length` = the checkpoint's context) and
            `backbone`; anything else overrides `GPTBackbone` arguments
            (e.g. `dtype`).

    Returns:
        An instance of `cls`.
    """
    from keras_gpt_scratch.models.gpt_causal_lm import GPTCausalLM

    if not isinstance(source, GPT2Checkpoint):
        with read_gpt2_checkpoint(source) as opened:
            return from_gpt2_checkpoint(cls, opened, load_weights, progress, **kwargs)
    # keras_hub's task loader passes this; a converted checkpoint has no
    # task weights beyond the backbone's.
    kwargs.pop("load_task_weights", None)
    if issubclass(cls, GPTCausalLM):
        preprocessor = kwargs.pop("preprocessor", "default")
        backbone = kwargs.pop("backbone", None)
        if preprocessor == "default":
            preprocessor = default_preprocessor(source)
        if backbone is None:
            backbone = backbone_from_checkpoint(
                source, load_weights, progress, **kwargs
            )
        elif kwargs:
            raise TypeError(f"Unexpected arguments with a backbone: {sorted(kwargs)}.")
        return cls(backbone=backbone, preprocessor=preprocessor)
    return backbone_from_checkpoint(source, load_weights, progress, **kwargs)


def backbone_tensors(backbone: Any, dtype: str = "float32") -> dict[str, np.ndarray]:
    """A `GPTBackbone`'s weights as canonical GPT-2 tensors (OpenAI layout).

    The inverse of `load_checkpoint_weights`: query/key/value are joined into
    `c_attn`, and an untied head becomes `lm_head` `(vocab, hidden)`. A model
    built with `qkv_bias=False` gets zero `c_attn` biases, which compute the
    same function. LoRA adapters are merged into their kernels; a quantized
    (int8) model is refused.

    Args:
        backbone: a `GPTBackbone`.
        dtype: NumPy dtype of the returned arrays.

    Returns:
        Canonical name -> array, in model order.
    """
    quantized = sorted(
        layer.name
        for layer in backbone._flatten_layers()  # noqa: SLF001 - Keras' layer walk
        if getattr(layer, "quantization_mode", None) is not None
    )
    if quantized:
        raise ValueError(
            f"The model is quantized ({', '.join(quantized[:3])}, ...): its "
            "kernels hold int8 values and scales, which a GPT-2 checkpoint "
            "cannot store. Export the float model: before `quantize()`, or "
            "loaded again from its preset."
        )
    config = GPT2Config.from_backbone(backbone)
    targets = names.keras_targets(backbone, config.n_layer, config.tie_word_embeddings)
    tensors = {}
    for name, variables in targets.items():
        parts = []
        for variable in variables:
            if variable is None:  # a bias the model was built without
                width = backbone.hidden_dim
                parts.append(np.zeros((width,), dtype))
            else:
                # With LoRA, `Dense.kernel` is a tensor: the kernel plus the
                # adapters' product, which is what the model computes with.
                value = getattr(variable, "value", variable)
                parts.append(keras.ops.convert_to_numpy(value).astype(dtype))
        array = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
        if name == names.LM_HEAD:
            array = array.T
        tensors[name] = np.ascontiguousarray(array)
    return tensors
