"""Preprocessing for `GPTCausalLM`: strings to packed ids and next-token labels."""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf
from keras_hub.models import CausalLMPreprocessor
from keras_hub.src.utils.python_utils import classproperty
from keras_hub.src.utils.tensor_utils import preprocessing_function, strip_to_ragged

from keras_gpt_scratch.models import gpt_presets
from keras_gpt_scratch.models.gpt_backbone import GPTBackbone
from keras_gpt_scratch.tokenizers.gpt_tokenizer import GPTTokenizer


def check_sequence_length(sequence_length) -> None:
    """Raise a clear error unless `sequence_length` is a positive int."""
    if (
        isinstance(sequence_length, bool)
        or not isinstance(sequence_length, (int, np.integer))
        or sequence_length <= 0
    ):
        raise ValueError(
            f"`sequence_length` must be a positive int. Received: {sequence_length!r}."
        )


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class GPTCausalLMPreprocessor(CausalLMPreprocessor):
    """GPT causal LM preprocessor.

    This preprocessing layer is meant for use with
    `keras_gpt_scratch.models.GPTCausalLM`, and behaves like keras_hub's
    `GPT2CausalLMPreprocessor`. By default, it will take in batches of
    strings, and return outputs in a `(x, y, sample_weight)` format, where the
    `y` label is the next token id in the `x` sequence: `x` is
    `{"token_ids", "padding_mask"}` of shape `(batch, sequence_length)`,
    `y` is `token_ids` shifted left by one, and `sample_weight` masks the
    padding.

    Each text is tokenized, `<|endoftext|>` (50256) is added at its start and
    end, and the result is truncated or padded (with 50256, masked out) to
    `sequence_length + 1` before the shift. Pass `add_start_token=False,
    add_end_token=False` for the book's raw windows of running text, where a
    sample is a slice of a longer document rather than a whole one.

    For use with generation, the layer also exposes two methods
    `generate_preprocess()` and `generate_postprocess()`. When this
    preprocessor is attached to a `GPTCausalLM`, these are called implicitly
    by `generate()`; they can also be called standalone.

    Args:
        tokenizer: A `keras_gpt_scratch.tokenizers.GPTTokenizer`. Defaults to
            a new `GPTTokenizer()`.
        sequence_length: The length of the packed inputs.
        add_start_token: If `True`, the preprocessor will prepend the tokenizer
            start token to each input sequence.
        add_end_token: If `True`, the preprocessor will append the tokenizer
            end token to each input sequence.

    Call arguments:
        x: A string, `tf.Tensor` or list of python strings.
        y: Label data. Should always be `None` as the layer generates labels.
        sample_weight: Label weights. Should always be `None` as the layer
            generates label weights.
        sequence_length: Pass to override the configured `sequence_length` of
            the layer.

    Example:

    ```python
    preprocessor = keras_gpt_scratch.models.GPTCausalLMPreprocessor(
        sequence_length=8
    )

    # Tokenize and pack a single sentence.
    x, y, sample_weight = preprocessor("Hello, world")
    # x["token_ids"]: [50256, 15496, 11, 995, 50256, 50256, 50256, 50256]
    # y:              [15496, 11, 995, 50256, 50256, 50256, 50256, 50256]
    # sample_weight:  [True, True, True, True, False, False, False, False]

    # A batch of sentences.
    preprocessor(["Taco tuesday", "Fish taco please!"])

    # Map a dataset of raw strings.
    ds = tf.data.Dataset.from_tensor_slices(["Avatar 2 is amazing!", "Meh."])
    ds = ds.batch(2).map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)

    # Generation.
    x = preprocessor.generate_preprocess(["Hello,"])
    preprocessor.generate_postprocess(x)  # ["Hello,"]
    ```
    """

    backbone_cls = GPTBackbone
    tokenizer_cls = GPTTokenizer

    def __init__(
        self,
        tokenizer: GPTTokenizer | None = None,
        sequence_length: int = 1024,
        add_start_token: bool = True,
        add_end_token: bool = True,
        **kwargs,
    ) -> None:
        check_sequence_length(sequence_length)
        if tokenizer is None:
            tokenizer = GPTTokenizer()
        super().__init__(
            tokenizer=tokenizer,
            sequence_length=sequence_length,
            add_start_token=add_start_token,
            add_end_token=add_end_token,
            **kwargs,
        )

    @preprocessing_function
    def _generate_postprocess_tf(self, x):
        # keras_hub's version converts to NumPy, which fails while tracing a
        # `tf.function`; stay in TensorFlow instead.
        if not self.built:
            self.build(None)
        token_ids = tf.convert_to_tensor(x["token_ids"])
        padding_mask = tf.convert_to_tensor(x["padding_mask"])
        ids_to_strip = self.tokenizer.special_token_ids
        token_ids = strip_to_ragged(token_ids, padding_mask, ids_to_strip)
        return self.tokenizer.detokenize(token_ids)

    def export_to_transformers(self, path) -> None:
        """Writes the tokenizer's files in Hugging Face's layout.

        `vocab.json`, `merges.txt`, `tokenizer_config.json` and
        `special_tokens_map.json`, as `GPTTokenizer.export_to_transformers`
        writes them; `AutoTokenizer.from_pretrained(path)` loads them.

        Args:
            path: the output folder; created if needed.

        Example:
        ```python
        lm.backbone.export_to_transformers("gpt2-hf")  # the model's files
        lm.preprocessor.export_to_transformers("gpt2-hf")  # the tokenizer's
        ```
        """
        from keras_gpt_scratch.weights import export_tokenizer

        if self.tokenizer is None:
            raise ValueError(
                "This preprocessor has no tokenizer, so there is nothing to "
                "export. Pass `tokenizer=GPTTokenizer()` when building it."
            )
        export_tokenizer(self.tokenizer, path)

    @classproperty
    def presets(cls) -> dict[str, dict]:
        """The built-in presets: name -> spec."""
        return dict(gpt_presets.builtin_presets())

    @classmethod
    def from_preset(cls, preset, **kwargs) -> GPTCausalLMPreprocessor:
        """Builds the preprocessor of a built-in preset or a preset directory.

        A built-in name (see `presets`) gives a `GPTTokenizer` and the
        preset's `sequence_length`; a directory written by `save_to_preset()`
        is loaded by keras_hub, tokenizer assets included.
        """
        if isinstance(preset, os.PathLike):
            preset = os.fspath(preset)
        if isinstance(preset, str) and preset in gpt_presets.builtin_presets():
            return gpt_presets.preprocessor_from_builtin(cls, preset, **kwargs)
        gpt_presets.check_known_preset(preset)
        return super().from_preset(preset, **kwargs)
