import keras
from keras import ops

from keras_gpt_scratch.layers.init_utils import clone_initializer


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class PositionEmbedding(keras.layers.Layer):
    """Learned absolute position embedding (book, ch. 2 and 4).

    Holds one trainable vector per position up to `sequence_length` and
    returns the vectors for the positions of its input, to be added to the
    token embeddings.

    Args:
        sequence_length: int. The longest sequence the model accepts (GPT-2's
            context length, 1024).
        initializer: initializer for the table.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        inputs: a tensor `(batch, sequence, hidden_dim)`; only its sequence
            length is used.
        start_index: int or int tensor. Position of the first input element,
            for decoding with a key/value cache.

    Example:
    ```python
    pos = keras_gpt_scratch.PositionEmbedding(sequence_length=1024)
    p = pos(np.zeros((2, 5, 768), "float32"))  # (5, 768), broadcasts over batch
    ```
    """

    def __init__(self, sequence_length: int, initializer="uniform", **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = int(sequence_length)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, input_shape[-1]),
            initializer=clone_initializer(self.initializer),
        )

    def call(self, inputs, start_index=0):
        length = ops.shape(inputs)[1]
        if not isinstance(start_index, int):
            start_index = ops.cast(start_index, "int32")  # an int64 position too
        if isinstance(length, int) and isinstance(start_index, int):
            if start_index + length > self.sequence_length:
                raise ValueError(
                    f"The input has {start_index + length} positions but the "
                    f"model's context length (max_sequence_length) is "
                    f"{self.sequence_length}. Truncate the input, for example "
                    f"keep its last {self.sequence_length} tokens."
                )
        else:
            import tensorflow as tf

            tf.debugging.assert_non_negative(
                start_index, message="The start position must not be negative."
            )
            tf.debugging.assert_less_equal(
                start_index + length,
                self.sequence_length,
                message=(
                    "The input is longer than the model's context length "
                    f"(max_sequence_length={self.sequence_length}). Truncate it."
                ),
            )
        if isinstance(start_index, int):
            dim = ops.shape(self.embeddings)[-1]
            positions = ops.slice(self.embeddings, (start_index, 0), (length, dim))
        else:
            # XLA needs a slice's start at compile time, so a function
            # compiled on its own would be compiled again for every position.
            rows = start_index + ops.arange(length, dtype="int32")
            positions = ops.take(self.embeddings, rows, 0)
        return ops.cast(positions, self.compute_dtype)  # (T, C)

    def compute_output_shape(self, input_shape):
        return (input_shape[1], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config
