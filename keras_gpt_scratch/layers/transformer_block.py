import keras

from keras_gpt_scratch.layers.feed_forward import FeedForward
from keras_gpt_scratch.layers.init_utils import clone_initializer
from keras_gpt_scratch.layers.layer_norm import LayerNorm
from keras_gpt_scratch.layers.multi_head_attention import MultiHeadAttention


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class TransformerBlock(keras.layers.Layer):
    """GPT-2's pre-LayerNorm transformer block (book, ch. 4.5).

    ```
    x = x + Dropout(MultiHeadAttention(LayerNorm(x)))
    x = x + Dropout(FeedForward(LayerNorm(x)))
    ```

    Args:
        num_heads: int. Number of attention heads.
        intermediate_dim: int. Inner width of the feed-forward block
            (GPT-2: `4 * hidden_dim`).
        dropout: float. Rate for the attention weights and both shortcut
            branches.
        qkv_bias: bool. Bias on the query, key and value projections.
        layer_norm_epsilon: float. LayerNorm epsilon (GPT-2: 1e-5).
        approximate_gelu: bool. GELU's tanh approximation (GPT-2).
        kernel_initializer: initializer for all kernels.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        inputs: a float tensor `(batch, sequence, hidden_dim)`.
        padding_mask: optional `(batch, sequence)` mask of real tokens.
        cache: optional key/value cache, see `MultiHeadAttention`.
        cache_update_index: int or int tensor, see `MultiHeadAttention`.
        training: bool. Apply dropout.

    Returns:
        `(batch, sequence, hidden_dim)`, or `(output, cache)` with a cache.

    Example:
    ```python
    block = keras_gpt_scratch.TransformerBlock(num_heads=12, intermediate_dim=3072)
    y = block(np.random.rand(2, 4, 768).astype("float32"))  # (2, 4, 768)
    ```
    """

    def __init__(
        self,
        num_heads: int,
        intermediate_dim: int | None = None,
        dropout: float = 0.0,
        qkv_bias: bool = True,
        layer_norm_epsilon: float = 1e-5,
        approximate_gelu: bool = True,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.qkv_bias = qkv_bias
        self.layer_norm_epsilon = layer_norm_epsilon
        self.approximate_gelu = approximate_gelu
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        # === Layers ===
        self.attention_norm = LayerNorm(
            self.layer_norm_epsilon, dtype=self.dtype_policy, name="attention_norm"
        )
        self.attention_norm.build(input_shape)
        self.attention = MultiHeadAttention(
            self.num_heads,
            dropout=self.dropout,
            qkv_bias=self.qkv_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="attention",
        )
        self.attention.build(input_shape)
        self.attention_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="attention_shortcut_dropout"
        )
        self.feed_forward_norm = LayerNorm(
            self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="feed_forward_norm",
        )
        self.feed_forward_norm.build(input_shape)
        self.feed_forward = FeedForward(
            self.intermediate_dim,
            approximate_gelu=self.approximate_gelu,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="feed_forward",
        )
        self.feed_forward.build(input_shape)
        self.feed_forward_dropout = keras.layers.Dropout(
            self.dropout,
            dtype=self.dtype_policy,
            name="feed_forward_shortcut_dropout",
        )

    def call(
        self,
        inputs,
        padding_mask=None,
        cache=None,
        cache_update_index=None,
        training=None,
    ):
        x = self.attention_norm(inputs)
        if cache is not None:
            x, cache = self.attention(
                x, cache=cache, cache_update_index=cache_update_index
            )
        else:
            x = self.attention(x, padding_mask=padding_mask, training=training)
        x = inputs + self.attention_dropout(x, training=training)  # (B, T, C)
        shortcut = x
        x = self.feed_forward(self.feed_forward_norm(x))
        x = shortcut + self.feed_forward_dropout(x, training=training)
        if cache is not None:
            return x, cache
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "qkv_bias": self.qkv_bias,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "approximate_gelu": self.approximate_gelu,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
