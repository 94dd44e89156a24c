import keras
from keras import ops

from keras_gpt_scratch.layers.fusion import fused


def layer_norm(x, scale, shift, epsilon):
    """`scale * (x - mean) / sqrt(var + epsilon) + shift` over the last axis,
    with float32 statistics (all inputs are float32 here)."""
    mean = ops.mean(x, axis=-1, keepdims=True)
    var = ops.var(x, axis=-1, keepdims=True)  # biased, as GPT-2
    return (x - mean) * ops.rsqrt(var + epsilon) * scale + shift


def _layer_norm_grad(x, scale, shift, epsilon, dy):
    # Recomputes the statistics from x, so only the inputs are kept.
    mean = ops.mean(x, axis=-1, keepdims=True)
    rstd = ops.rsqrt(ops.var(x, axis=-1, keepdims=True) + epsilon)
    x_hat = (x - mean) * rstd
    g = dy * scale
    dx = rstd * (
        g
        - ops.mean(g, axis=-1, keepdims=True)
        - x_hat * ops.mean(g * x_hat, axis=-1, keepdims=True)
    )
    axes = tuple(range(len(x.shape) - 1))
    dscale = ops.sum(dy * x_hat, axis=axes)
    dshift = ops.sum(dy, axis=axes)
    return dx, dscale, dshift, None


_fused_layer_norm = fused(layer_norm, _layer_norm_grad)


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class LayerNorm(keras.layers.Layer):
    """Layer normalization with a learnable scale and shift (book, ch. 4).

    Normalizes the last axis to zero mean and unit variance, then applies
    `scale * x + shift`. The statistics are always computed in float32, so
    the layer is safe under a `mixed_bfloat16` policy; the output is cast
    back to the layer's compute dtype.

    Args:
        epsilon: float. Added to the variance to avoid dividing by zero.
            GPT-2 uses `1e-5` (Keras' own `LayerNormalization` defaults to
            `1e-3`, which does not reproduce GPT-2's numbers).
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name` and `dtype`.

    Call arguments:
        inputs: a float tensor of shape `(..., features)`.

    Example:
    ```python
    norm = keras_gpt_scratch.LayerNorm()
    x = np.random.rand(2, 4, 8).astype("float32")
    y = norm(x)  # mean ~0 and variance ~1 along the last axis
    ```
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        dim = input_shape[-1]
        self.scale = self.add_weight(name="scale", shape=(dim,), initializer="ones")
        self.shift = self.add_weight(name="shift", shape=(dim,), initializer="zeros")

    def call(self, inputs):
        # `layer_norm` above, fused into one XLA pass with its derivative
        # (layers/fusion.py). Statistics are float32, always.
        x = _fused_layer_norm(
            ops.cast(inputs, "float32"),
            ops.cast(self.scale, "float32"),
            ops.cast(self.shift, "float32"),
            ops.convert_to_tensor(self.epsilon, "float32"),
        )
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config
