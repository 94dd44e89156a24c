"""GPT with a classification head on its last token (book, chapter 6)."""

from __future__ import annotations

import json
import os

import keras
from keras import ops
from keras_hub.models import TextClassifier

from keras_gpt_scratch.io_utils import atomic_file
from keras_gpt_scratch.layers.linear import SyncsInt8Kernels
from keras_gpt_scratch.models import gpt_presets
from keras_gpt_scratch.models.gpt_backbone import GPTBackbone
from keras_gpt_scratch.models.gpt_classifier_preprocessor import (
    GPTClassifierPreprocessor,
)


class _LastTokenPooler(keras.layers.Layer):
    """Picks each row's hidden state at its last real (unpadded) token.

    With causal attention only the last token has seen the whole text, so it
    is the one to classify (book, section 6.5). Rows are right-padded, so the
    last real token sits at `sum(padding_mask) - 1`; reading position -1
    instead would read a padding token for every text shorter than the
    batch. An all-padding row reads position 0.
    """

    def call(self, hidden_states, padding_mask):
        lengths = ops.sum(ops.cast(padding_mask, "int32"), axis=-1)  # (B,)
        last = ops.maximum(lengths - 1, 0)
        index = ops.expand_dims(ops.expand_dims(last, -1), -1)  # (B, 1, 1)
        pooled = ops.take_along_axis(hidden_states, index, axis=1)  # (B, 1, C)
        return ops.squeeze(pooled, axis=1)  # (B, C)

    def compute_output_shape(self, hidden_states_shape, padding_mask_shape=None):
        return (hidden_states_shape[0], hidden_states_shape[-1])


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class GPTClassifier(SyncsInt8Kernels, gpt_presets.PresetMixin, TextClassifier):
    """GPT fine-tuned for text classification (the book's chapter 6).

    A `GPTBackbone`, usually pretrained, with a `Dense(num_classes)` head on
    the hidden state of each text's last real token, found through the
    padding mask. With `train_last_block_only=True` only the last
    transformer block, the final LayerNorm and the head train, the book's
    setting; otherwise the whole model does. For LoRA, call
    `classifier.backbone.enable_lora(rank)`: the backbone then trains only
    its adapters, and the head stays trainable.

    Attach a `GPTClassifierPreprocessor` to work on raw strings; `fit()`
    takes `(texts, labels)` with integer labels in `[0, num_classes)`.
    `compile()` defaults to Adam at 5e-5, sparse categorical cross-entropy
    and accuracy (keras_hub's `TextClassifier` defaults).

    Args:
        backbone: a `GPTBackbone`.
        num_classes: int. Number of classes.
        preprocessor: a `GPTClassifierPreprocessor`, or `None` to feed
            `{"token_ids", "padding_mask"}` directly. A `sequence_length`
            longer than the backbone's context is lowered to it.
        activation: the head's activation: `None` (logits) or `"softmax"`.
        dropout: float. Dropout on the pooled hidden state before the head.
        train_last_block_only: bool. Freeze the embeddings and all but the
            last transformer block (this changes `backbone`'s layers).
        **kwargs: other keyword arguments passed to `keras_hub`'s `Task`.

    Example:
    ```python
    classifier = keras_gpt_scratch.GPTClassifier.from_preset(
        "gpt2_124m", num_classes=2, train_last_block_only=True
    )
    classifier.fit(["You won a prize!", "See you at 5"], [1, 0], epochs=1)
    classifier.predict(["Claim your free cruise now"])  # (1, 2) logits
    ```

    Without a preprocessor:
    ```python
    classifier = keras_gpt_scratch.GPTClassifier(backbone, num_classes=2)
    x = {"token_ids": np.array([[15496, 11, 995, 50256]]),
         "padding_mask": np.array([[1, 1, 1, 0]])}
    classifier.predict(x)  # (1, 2), from the hidden state of "world"
    ```
    """

    backbone_cls = GPTBackbone
    preprocessor_cls = GPTClassifierPreprocessor

    def __init__(
        self,
        backbone: GPTBackbone,
        num_classes: int,
        preprocessor: GPTClassifierPreprocessor | None = None,
        activation=None,
        dropout: float = 0.0,
        train_last_block_only: bool = False,
        **kwargs,
    ):
        if (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, int)
            or num_classes < 1
        ):
            raise ValueError(f"num_classes must be an int >= 1; got {num_classes!r}.")
        if (
            preprocessor is not None
            and preprocessor.sequence_length > backbone.max_sequence_length
        ):
            # Texts are cut to what the model can see (the book caps its
            # padded length at the context length too).
            preprocessor.sequence_length = backbone.max_sequence_length

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.pooler = _LastTokenPooler(dtype=backbone.dtype_policy, name="pooler")
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=backbone.dtype_policy, name="output_dropout"
        )
        self.output_dense = keras.layers.Dense(
            num_classes,
            activation=activation,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
            dtype=backbone.dtype_policy,
            name="logits",
        )

        # === Functional Model ===
        inputs = backbone.input
        hidden_states = backbone(inputs)  # (B, T, C)
        x = self.pooler(hidden_states, inputs["padding_mask"])  # (B, C)
        x = self.output_dropout(x)
        outputs = self.output_dense(x)  # (B, num_classes)
        # Float32 scores under mixed precision, for an accurate softmax/loss.
        outputs = ops.cast(outputs, "float32")
        # Compiled below, once `activation` is set: the default loss reads it.
        compile_now = kwargs.pop("compile", True)
        super().__init__(inputs=inputs, outputs=outputs, compile=False, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.activation = keras.activations.get(activation)
        self.dropout = dropout
        self.train_last_block_only = train_last_block_only

        if train_last_block_only:
            # The book's setting (section 6.6): the last block, the final
            # LayerNorm (backbone.layer_norm) and the head train.
            backbone.token_embedding.trainable = False
            backbone.position_embedding.trainable = False
            for block in backbone.transformer_layers[:-1]:
                block.trainable = False
        if compile_now:
            self.compile()

    def preprocess_samples(self, x, y=None, sample_weight=None):
        # Token-id batches skip the string preprocessor, so a model with one
        # attached still takes `{"token_ids", "padding_mask"}` directly.
        if isinstance(x, dict) and "token_ids" in x:
            return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        return super().preprocess_samples(x, y, sample_weight)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "activation": keras.activations.serialize(self.activation),
                "dropout": self.dropout,
                "train_last_block_only": self.train_last_block_only,
            }
        )
        return config

    def get_compile_config(self):
        # AdamW's own config leaves out its weight-decay exclusions.
        config = super().get_compile_config()
        pattern = getattr(self.optimizer, "_exclude_from_weight_decay_pattern", None)
        if config and pattern is not None:
            config["exclude_from_weight_decay"] = sorted(pattern.pattern.split("|"))
        return config

    def compile_from_config(self, config):
        # Keras skips a custom `compile()` when loading; this restores it, so
        # a loaded `.keras` file resumes training with its optimizer state.
        config = dict(config)
        exclude = config.pop("exclude_from_weight_decay", None)
        self.compile(**keras.saving.deserialize_keras_object(config))
        if exclude:
            self.optimizer.exclude_from_weight_decay(var_names=exclude)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def save_task_weights(self, filepath):
        """Save the head's weights (not the backbone's, nor optimizer state)."""
        # keras_hub's version also saves the optimizer, which a fresh model
        # cannot load: every from_preset() would warn that it skipped it.
        self._task_weights_io(keras.saving.save_weights, filepath)

    def load_task_weights(self, filepath):
        """Load the head's weights saved by `save_task_weights`."""
        self._task_weights_io(keras.saving.load_weights, filepath)

    def _task_weights_io(self, io, filepath):
        if not str(filepath).endswith(".weights.h5"):
            raise ValueError(
                f"The filename must end in `.weights.h5`. Received: {filepath}"
            )
        skip = list(self.backbone._flatten_layers())
        if getattr(self, "optimizer", None) is not None:
            skip.append(self.optimizer)
        io(self, filepath, objects_to_skip=skip)

    def save(self, filepath, *args, **kwargs):
        """`keras.Model.save`, written to a temporary file then renamed."""
        with atomic_file(filepath) as tmp:
            super().save(tmp, *args, **kwargs)

    # === Presets ===

    @classmethod
    def from_preset(cls, preset, load_weights: bool = True, **kwargs):
        """A classifier on a pretrained backbone, or a saved classifier.

        `preset` is a built-in name (`"gpt2_124m"`), a preset directory (a
        `GPTCausalLM`'s, e.g. `runs/gpt_tiny/best`, or a classifier's), an
        OpenAI/Hugging Face GPT-2 folder, or an `hf://` handle. From a
        classifier's preset the head is restored; from anything else, or
        whenever `num_classes` is passed, the head is new, so `num_classes`
        is required.

        Args:
            preset: see above.
            load_weights: load the pretrained weights (else random ones).
            **kwargs: `GPTClassifier` arguments (`num_classes`,
                `train_last_block_only`, ...) and `dtype`.
        """
        from keras_gpt_scratch import weights

        if isinstance(preset, os.PathLike):
            preset = os.fspath(preset)
        if "num_classes" not in kwargs and not _is_classifier_preset(preset):
            raise ValueError(
                f"{preset!r} is not a saved GPTClassifier, so the classification "
                "head is new: pass num_classes=..., e.g. "
                f"GPTClassifier.from_preset({preset!r}, num_classes=2)."
            )
        if (
            isinstance(preset, str)
            and preset not in gpt_presets.builtin_presets()
            and weights.is_gpt2_checkpoint(preset)
        ):
            # Converted by us; this builds a backbone, and the task on top.
            backbone = GPTBackbone.from_preset(
                preset, load_weights=load_weights, dtype=kwargs.pop("dtype", None)
            )
            kwargs.setdefault(
                "preprocessor",
                GPTClassifierPreprocessor(sequence_length=backbone.max_sequence_length),
            )
            return cls(backbone=backbone, **kwargs)
        return super().from_preset(preset, load_weights=load_weights, **kwargs)

    @classmethod
    def _from_builtin(cls, name, spec, load_weights, **kwargs):
        return cls._task_from_builtin(name, spec, load_weights, **kwargs)


def _is_classifier_preset(preset) -> bool:
    """Whether `preset` may hold a saved GPTClassifier (head included).

    True for a local preset directory whose `task.json` is a GPTClassifier's
    and for remote handles (keras_hub's loader checks those); False for
    built-in names, GPT-2 checkpoints and causal LM presets.
    """
    if not isinstance(preset, str) or not os.path.isdir(preset):
        # hf:// handles are checked by keras_hub's loader once downloaded.
        return isinstance(preset, str) and "://" in preset
    task_file = os.path.join(preset, "task.json")
    if not os.path.isfile(task_file):
        return False
    try:
        with open(task_file, encoding="utf-8") as f:
            task = json.load(f)
    except ValueError:
        return True  # let check_preset_dir name the corrupt file
    return task.get("class_name") in (
        "GPTClassifier",
        "keras_gpt_scratch>GPTClassifier",
    )
