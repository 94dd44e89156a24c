import keras
from keras import ops

from keras_gpt_scratch.layers.attention_utils import attend, causal_mask
from keras_gpt_scratch.layers.init_utils import clone_initializer
from keras_gpt_scratch.layers.linear import Linear


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class MultiHeadAttention(keras.layers.Layer):
    """Causal multi-head self-attention, GPT-2's attention (book, ch. 3.6).

    Projects the input to queries, keys and values, splits them into
    `num_heads` heads of `hidden_dim // num_heads`, applies causal scaled
    dot-product attention to every head at once (one batched matmul, not a
    loop over heads), merges the heads and applies an output projection.

    For generation it supports a key/value cache: pass `cache` and
    `cache_update_index`, and only the new positions are projected; their
    keys and values are written into the cache at `cache_update_index`.

    Args:
        num_heads: int. Number of attention heads; must divide the input width.
        dropout: float. Dropout rate on the attention weights.
        qkv_bias: bool. Add a bias to the query, key and value projections
            (GPT-2's weights have one; the book's from-scratch model has not).
        kernel_initializer: initializer for the projection kernels.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        inputs: a float tensor `(batch, sequence, hidden_dim)`.
        padding_mask: optional `(batch, sequence)` tensor, 1 for tokens and 0
            for padding; padding keys are never attended to. Ignored when a
            cache is given.
        cache: optional keys and values of earlier positions: a pair
            `(keys, values)` of `(batch, num_heads, max_length, head_dim)`
            tensors, or keras_hub's stacked `(batch, 2, max_length,
            num_heads, head_dim)` tensor. It is returned in the form given.
        cache_update_index: int or int tensor. Position of `inputs[:, 0]`.
        training: bool. Apply dropout.

    Returns:
        The attention output `(batch, sequence, hidden_dim)`, or with a cache,
        a tuple `(output, updated_cache)`.

    Example:
    ```python
    mha = keras_gpt_scratch.MultiHeadAttention(num_heads=12)
    y = mha(np.random.rand(2, 16, 768).astype("float32"))  # (2, 16, 768)
    ```
    """

    def __init__(
        self,
        num_heads: int,
        dropout: float = 0.0,
        qkv_bias: bool = True,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv_bias = qkv_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        if hidden_dim % self.num_heads:
            raise ValueError(
                f"The hidden size ({hidden_dim}) must be divisible by the "
                f"number of attention heads ({self.num_heads}). Choose a "
                "hidden size that is a multiple of num_heads."
            )
        self.hidden_dim = hidden_dim
        self.head_dim = hidden_dim // self.num_heads

        # === Layers ===
        # Separate q/k/v projections (not one fused c_attn) so that LoRA can
        # target "query" and "value" as in keras_hub.
        for name, bias in (
            ("query", self.qkv_bias),
            ("key", self.qkv_bias),
            ("value", self.qkv_bias),
            ("output_dense", True),
        ):
            dense = Linear(
                hidden_dim,
                use_bias=bias,
                kernel_initializer=clone_initializer(self.kernel_initializer),
                dtype=self.dtype_policy,
                name=name,
            )
            dense.build(input_shape)
            setattr(self, name, dense)
        self.attention_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="attention_dropout"
        )

    def _split_heads(self, x, batch, length):
        x = ops.reshape(x, (batch, length, self.num_heads, self.head_dim))
        return x  # (B, T, H, D)

    def call(
        self,
        inputs,
        padding_mask=None,
        cache=None,
        cache_update_index=None,
        training=None,
    ):
        batch, length = ops.shape(inputs)[0], ops.shape(inputs)[1]
        q = self._split_heads(self.query(inputs), batch, length)  # (B, T, H, D)
        k = self._split_heads(self.key(inputs), batch, length)
        v = self._split_heads(self.value(inputs), batch, length)

        q = ops.transpose(q, (0, 2, 1, 3))  # (B, H, T, D)
        k = ops.transpose(k, (0, 2, 1, 3))  # (B, H, T, D)
        v = ops.transpose(v, (0, 2, 1, 3))
        if cache is not None:
            stacked = not isinstance(cache, (tuple, list))
            if stacked:  # keras_hub's (B, 2, S, H, D) layout
                cache = tuple(ops.transpose(cache[:, i], (0, 2, 1, 3)) for i in (0, 1))
            # Head-major (B, H, S, D) caches are updated in place, only at the
            # new positions. (XLA still copies the keys into a (D, S) layout
            # for Q K^T; storing them that way measured slower.)
            start = [0, 0, cache_update_index, 0]
            k = ops.slice_update(cache[0], start, k)  # (B, H, S, D)
            v = ops.slice_update(cache[1], start, v)
            if stacked:
                cache = ops.stack(
                    [ops.transpose(t, (0, 2, 1, 3)) for t in (k, v)], axis=1
                )
            else:
                cache = (k, v)
            mask = causal_mask(length, ops.shape(k)[2], cache_update_index)
        else:
            mask = causal_mask(length, length)  # (T, T)
            if padding_mask is not None:
                keys = ops.cast(padding_mask, "bool")[:, None, None, :]
                mask = ops.logical_and(mask, keys)  # (B, 1, T, T)

        context, _ = attend(q, k, v, mask, self.attention_dropout, training)
        context = ops.transpose(context, (0, 2, 1, 3))  # (B, T, H, D)
        context = ops.reshape(context, (batch, length, self.hidden_dim))
        output = self.output_dense(context)  # (B, T, C)
        if cache is not None:
            return output, cache
        return output

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "dropout": self.dropout,
                "qkv_bias": self.qkv_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
