import copy

import keras
import tensorflow as tf
from keras import ops
from keras.quantizers import abs_max_quantize

from keras_gpt_scratch.layers.init_utils import clone_initializer
from keras_gpt_scratch.layers.linear import int8_matmul


def check_ids(ids, size, message):
    """`ids`, after checking each is in `[0, size)`.

    Eagerly, a bad id raises `ValueError(message(first_bad_id))`; in a graph,
    an assertion fails with `message(None)` and the first bad id (the op that
    uses the ids is made to wait for it, or it would fail first, opaquely).
    """
    bad = tf.logical_or(ids < 0, ids >= size)
    if tf.executing_eagerly():
        if bool(tf.reduce_any(bad)):
            raise ValueError(message(int(tf.boolean_mask(ids, bad)[0])))
        return ids
    flat_bad = tf.reshape(bad, [-1])
    # A sentinel at the end keeps the argmax defined for no ids at all (an
    # empty half of a one-row batch, `GPTCausalLM.interleaved_halves`).
    first = tf.gather(
        tf.concat([tf.reshape(ids, [-1]), tf.zeros([1], ids.dtype)], 0),
        tf.argmax(tf.cast(tf.concat([flat_bad, [True]], 0), "int32")),
    )
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(flat_bad)),
        [message(None), "The first bad id is", first],
        summarize=1,
    )
    with tf.control_dependencies([check]):
        return tf.identity(ids)


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class TokenEmbedding(keras.layers.Embedding):
    """Token embedding that doubles as the language-model head (book, ch. 4).

    Forward, it looks token ids up in a `(vocabulary_size, hidden_dim)`
    table, like `torch.nn.Embedding` in the book. With `reverse=True` it maps
    hidden states back to vocabulary logits: through the transposed table
    when the weights are tied (GPT-2), or through a separate
    `(hidden_dim, vocabulary_size)` matrix when they are not (the book's
    `out_head`). It builds on `keras.layers.Embedding` so that Keras' LoRA
    and int8 quantization apply to the table.

    Token ids outside `[0, vocabulary_size)` raise an error that names the
    first bad id: TensorFlow's own gather fails with an opaque message on
    CPU and silently returns zeros on GPU.

    Args:
        vocabulary_size: int. Number of token ids.
        hidden_dim: int. Width of each embedding vector.
        tie_weights: bool. Reuse the table as the output projection.
        embeddings_initializer: initializer for the table.
        head_initializer: initializer for the untied head; defaults to
            `embeddings_initializer`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        inputs: int token ids `(batch, sequence)`, or with `reverse=True`,
            hidden states `(batch, sequence, hidden_dim)`.
        reverse: bool. Project hidden states to logits instead of looking
            ids up. Logits are returned in float32 so that softmax and the
            loss stay accurate under mixed precision.

    Example:
    ```python
    emb = keras_gpt_scratch.TokenEmbedding(50257, 768)
    x = emb(np.array([[15496, 11, 995]]))  # (1, 3, 768)
    logits = emb(x, reverse=True)  # (1, 3, 50257)
    ```
    """

    def __init__(
        self,
        vocabulary_size: int,
        hidden_dim: int,
        tie_weights: bool = True,
        embeddings_initializer="uniform",
        head_initializer=None,
        **kwargs,
    ):
        super().__init__(
            input_dim=vocabulary_size,
            output_dim=hidden_dim,
            embeddings_initializer=clone_initializer(
                keras.initializers.get(embeddings_initializer)
            ),
            **kwargs,
        )
        self.tie_weights = tie_weights
        self.head_initializer = keras.initializers.get(
            head_initializer or embeddings_initializer
        )

    @property
    def vocabulary_size(self) -> int:
        return self.input_dim

    def build(self, input_shape=None):
        super().build(input_shape)
        if not self.tie_weights:
            self.reverse_embeddings = self.add_weight(
                name="reverse_embeddings",
                shape=(self.output_dim, self.input_dim),
                initializer=clone_initializer(self.head_initializer),
            )

    def call(self, inputs, reverse: bool = False):
        if reverse:
            shape = ops.shape(inputs)
            x = ops.reshape(inputs, (-1, shape[-1]))  # (B*T, C)
            if self.tie_weights:
                # transpose_b reads the (V, C) table in place; ops.transpose
                # would copy all of it on every step.
                table = ops.cast(self.embeddings, self.compute_dtype)
                logits = tf.matmul(x, table, transpose_b=True)
            else:
                logits = ops.matmul(
                    x, ops.cast(self.reverse_embeddings, self.compute_dtype)
                )
            logits = ops.reshape(logits, (*shape[:-1], self.input_dim))  # (B, T, V)
            return ops.cast(logits, "float32")
        inputs = ops.convert_to_tensor(inputs)
        if not inputs.dtype.is_integer:
            inputs = ops.cast(inputs, "int32")
        inputs = self._check_ids(inputs)
        return super().call(inputs)  # (B, T, C)

    @property
    def variable_serialization_spec(self):
        # Keras' Embedding saves only its table; an untied head must be
        # saved and loaded too (keras.layers.ReversibleEmbedding does this).
        spec = copy.deepcopy(super().variable_serialization_spec)
        if not self.tie_weights:
            for names in spec.values():
                names.append("reverse_embeddings")
        return spec

    def quantize(self, mode=None, type_check=True, config=None):
        """Int8-quantize the table (Keras' `Embedding.quantize`); the tied
        head then reads the same int8 table."""
        if mode != "int8":
            raise NotImplementedError(
                f"TokenEmbedding supports int8 quantization only, not {mode!r}."
            )
        super().quantize(mode, type_check=False, config=config)

    def _int8_call(self, inputs, reverse: bool = False, training=None):
        if not reverse:
            inputs = ops.convert_to_tensor(inputs)
            if not inputs.dtype.is_integer:
                inputs = ops.cast(inputs, "int32")
            return super()._int8_call(self._check_ids(inputs))
        shape = ops.shape(inputs)
        x = ops.reshape(inputs, (-1, shape[-1]))  # (B*T, C)
        if not self.tie_weights:
            logits = ops.matmul(x, ops.cast(self.reverse_embeddings, x.dtype))
        else:
            # The table is already laid out (units, input_dim) for the head.
            logits = int8_matmul(
                x, self._embeddings, self.embeddings_scale, abs_max_quantize
            )
        logits = ops.reshape(logits, (*shape[:-1], self.input_dim))
        return ops.cast(logits, "float32")

    def _check_ids(self, ids):
        return check_ids(ids, self.input_dim, self._bad_id_message)

    def _bad_id_message(self, token_id):
        which = "A token id" if token_id is None else f"Token id {token_id}"
        return (
            f"{which} is outside the vocabulary [0, "
            f"{self.input_dim}). Check the tokenizer matches the model's "
            "vocabulary_size."
        )

    def compute_output_shape(self, input_shape, reverse=False):
        if reverse:
            return (*input_shape[:-1], self.input_dim)
        return (*input_shape, self.output_dim)

    def compute_output_spec(self, inputs, reverse=False):
        shape = self.compute_output_shape(inputs.shape, reverse=reverse)
        dtype = "float32" if reverse else self.compute_dtype
        return keras.KerasTensor(shape, dtype=dtype)

    def get_config(self):
        config = super().get_config()
        for key in ("input_dim", "output_dim", "mask_zero", "input_length"):
            config.pop(key, None)
        config.update(
            {
                "vocabulary_size": self.input_dim,
                "hidden_dim": self.output_dim,
                "tie_weights": self.tie_weights,
                "head_initializer": keras.initializers.serialize(self.head_initializer),
            }
        )
        return config
