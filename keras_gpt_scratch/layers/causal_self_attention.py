import keras
from keras import ops

from keras_gpt_scratch.layers.attention_utils import causal_mask
from keras_gpt_scratch.layers.self_attention import SelfAttention


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class CausalSelfAttention(SelfAttention):
    """Single-head causal self-attention with dropout (book, ch. 3.5).

    The book's `CausalAttention`: like `SelfAttention`, but position `t` only
    attends to positions `<= t`, and dropout is applied to the attention
    weights during training.

    Args:
        output_dim: int. Width of the queries, keys, values and output.
        dropout: float. Dropout rate on the attention weights.
        qkv_bias: bool. Add a bias to the three projections.
        kernel_initializer: initializer for the projection kernels.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        inputs: a float tensor `(batch, sequence, input_dim)`.
        training: bool. Apply dropout.
        return_attention_scores: bool. Also return the attention weights.

    Example:
    ```python
    att = keras_gpt_scratch.CausalSelfAttention(output_dim=2, dropout=0.0)
    context = att(np.random.rand(2, 6, 3).astype("float32"))  # (2, 6, 2)
    ```
    """

    def __init__(self, output_dim: int, dropout: float = 0.0, **kwargs):
        super().__init__(output_dim, **kwargs)
        self.dropout = dropout

    def build(self, input_shape):
        super().build(input_shape)
        self.dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="attention_dropout"
        )

    def _mask(self, inputs):
        length = ops.shape(inputs)[1]
        return causal_mask(length, length)  # (T, T)

    def get_config(self):
        config = super().get_config()
        config.update({"dropout": self.dropout})
        return config
