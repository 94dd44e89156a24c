import keras

from keras_gpt_scratch.layers.attention_utils import attend
from keras_gpt_scratch.layers.init_utils import clone_initializer
from keras_gpt_scratch.layers.linear import Linear


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class SelfAttention(keras.layers.Layer):
    """Scaled dot-product self-attention with trainable weights (book, ch. 3.4).

    The book's `SelfAttention_v2`: project the input to queries, keys and
    values, then return `softmax(Q K^T / sqrt(d_k)) V`. Every position sees
    every other position; see `CausalSelfAttention` for the masked version
    a language model needs.

    Args:
        output_dim: int. Width of the queries, keys, values and output
            (the book's `d_out`).
        qkv_bias: bool. Add a bias to the three projections.
        kernel_initializer: initializer for the projection kernels.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        inputs: a float tensor `(batch, sequence, input_dim)`.
        return_attention_scores: bool. Also return the attention weights
            `(batch, sequence, sequence)`.

    Example:
    ```python
    att = keras_gpt_scratch.SelfAttention(output_dim=2)
    context = att(np.random.rand(1, 6, 3).astype("float32"))  # (1, 6, 2)
    ```
    """

    def __init__(
        self,
        output_dim: int,
        qkv_bias: bool = False,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.output_dim = output_dim
        self.qkv_bias = qkv_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        # === Layers ===
        for name in ("query", "key", "value"):
            dense = Linear(
                self.output_dim,
                use_bias=self.qkv_bias,
                kernel_initializer=clone_initializer(self.kernel_initializer),
                dtype=self.dtype_policy,
                name=name,
            )
            dense.build(input_shape)
            setattr(self, name, dense)
        self.dropout_layer = None

    def _mask(self, inputs):
        return None

    def call(self, inputs, training=None, return_attention_scores=False):
        q = self.query(inputs)  # (B, T, D)
        k = self.key(inputs)
        v = self.value(inputs)
        context, weights = attend(
            q, k, v, self._mask(inputs), self.dropout_layer, training
        )
        if return_attention_scores:
            return context, weights
        return context

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "output_dim": self.output_dim,
                "qkv_bias": self.qkv_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
