"""Preprocessing for `GPTClassifier`: strings to padded ids and a padding mask."""

from __future__ import annotations

import os

import keras
from keras_hub.layers import StartEndPacker
from keras_hub.models import TextClassifierPreprocessor
from keras_hub.src.utils.python_utils import classproperty
from keras_hub.src.utils.tensor_utils import preprocessing_function

from keras_gpt_scratch.models import gpt_presets
from keras_gpt_scratch.models.gpt_backbone import GPTBackbone
from keras_gpt_scratch.models.gpt_causal_lm_preprocessor import check_sequence_length
from keras_gpt_scratch.tokenizers.gpt_tokenizer import GPTTokenizer


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class GPTClassifierPreprocessor(TextClassifierPreprocessor):
    """GPT text classification preprocessor.

    This preprocessing layer is meant for use with
    `keras_gpt_scratch.models.GPTClassifier`. It tokenizes each text with a
    `GPTTokenizer`, truncates it to `sequence_length` tokens and pads it with
    `<|endoftext|>` (50256), as the book's `SpamDataset` does (chapter 6).
    Its output is `x = {"token_ids", "padding_mask"}`, with the labels `y`
    and `sample_weight` passed through unaltered.

    The padding mask marks the real tokens, computed from each text's
    length. keras_hub's `TextClassifierPreprocessor` instead compares the ids
    with the pad id, which is wrong for GPT-2: its pad id is also its
    end-of-text id, so a text that contains `<|endoftext|>` (or ends with an
    added end token) would lose those tokens from the mask, and the
    classifier would read the wrong "last token".

    Args:
        tokenizer: A `keras_gpt_scratch.tokenizers.GPTTokenizer`. Defaults to
            a new `GPTTokenizer()`.
        sequence_length: int. The length of the packed inputs; longer texts
            are truncated (their end is dropped). `GPTClassifier` lowers it
            to its backbone's context length when it is longer.
        add_start_token: bool. Prepend `<|endoftext|>` to each text.
        add_end_token: bool. Append `<|endoftext|>` to each text. The book
            adds neither.
        **kwargs: other keyword arguments passed to the base class.

    Call arguments:
        x: A string, a list of strings or a string tensor, rank 0 or 1.
        y: Labels, passed through unaltered.
        sample_weight: Label weights, passed through unaltered.

    Example:
    ```python
    preprocessor = keras_gpt_scratch.GPTClassifierPreprocessor(
        sequence_length=6
    )
    x = preprocessor(["Hello, world", "Great!"])
    # x["token_ids"]:    [[15496, 11, 995, 50256, 50256, 50256],
    #                     [13681, 0, 50256, 50256, 50256, 50256]]
    # x["padding_mask"]: [[True, True, True, False, False, False],
    #                     [True, True, False, False, False, False]]

    # Labelled data, e.g. mapped over a `tf.data.Dataset`.
    ds = tf.data.Dataset.from_tensor_slices((["good", "awful"], [1, 0]))
    ds = ds.batch(2).map(preprocessor)
    ```
    """

    backbone_cls = GPTBackbone
    tokenizer_cls = GPTTokenizer

    def __init__(
        self,
        tokenizer: GPTTokenizer | None = None,
        sequence_length: int = 1024,
        add_start_token: bool = False,
        add_end_token: bool = False,
        **kwargs,
    ) -> None:
        check_sequence_length(sequence_length)
        if tokenizer is None:
            tokenizer = GPTTokenizer()
        super().__init__(
            tokenizer=tokenizer, sequence_length=int(sequence_length), **kwargs
        )
        self.add_start_token = add_start_token
        self.add_end_token = add_end_token

    def build(self, input_shape):
        # Built lazily, like keras_hub's preprocessors, so that a restored
        # tokenizer has its assets before the packer reads its ids.
        self.packer = StartEndPacker(
            start_value=self.tokenizer.start_token_id,
            end_value=self.tokenizer.end_token_id,
            pad_value=self.tokenizer.pad_token_id,
            sequence_length=self.sequence_length,
            return_padding_mask=True,
            name="packer",
        )
        self.built = True

    def _pack(self, x, y=None, sample_weight=None):
        if isinstance(x, tuple):
            raise ValueError(
                "GPTClassifierPreprocessor takes one text per example, not a "
                f"tuple of {len(x)} segments. Join the segments into one "
                "string first."
            )
        if not self.built:
            self.build(None)
        # Lengths, not `token_ids != pad_id`, define the mask: see the class
        # docstring.
        token_ids, padding_mask = self.packer(
            self.tokenizer(x),
            add_start_value=self.add_start_token,
            add_end_value=self.add_end_token,
        )
        x = {"token_ids": token_ids, "padding_mask": padding_mask}
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    @preprocessing_function
    def _call_tf(self, x, y=None, sample_weight=None):
        return self._pack(x, y, sample_weight)

    def _call_python(self, x, y=None, sample_weight=None):
        return self._pack(x, y, sample_weight)

    def call(self, x, y=None, sample_weight=None):
        if self._use_tf_workflow():
            return self._call_tf(x, y, sample_weight)
        return self._call_python(x, y, sample_weight)

    def get_config(self):
        config = super().get_config()
        # Single-segment packing: the base class' `truncate` has no effect.
        config.pop("truncate", None)
        config.update(
            {
                "add_start_token": self.add_start_token,
                "add_end_token": self.add_end_token,
            }
        )
        return config

    @classproperty
    def presets(cls) -> dict[str, dict]:
        """The built-in presets: name -> spec."""
        return dict(gpt_presets.builtin_presets())

    @classmethod
    def from_preset(cls, preset, **kwargs) -> GPTClassifierPreprocessor:
        """Builds the preprocessor of a built-in preset or a preset directory.

        A built-in name (see `presets`) gives a `GPTTokenizer` and the
        preset's context length as `sequence_length`. A directory written by
        `save_to_preset()` is loaded by keras_hub, tokenizer assets included;
        a causal LM's preset gives its tokenizer and the default length.
        """
        if isinstance(preset, os.PathLike):
            preset = os.fspath(preset)
        if isinstance(preset, str) and preset in gpt_presets.builtin_presets():
            return gpt_presets.preprocessor_from_builtin(cls, preset, **kwargs)
        gpt_presets.check_known_preset(preset)
        return super().from_preset(preset, **kwargs)
