import keras
from keras import ops


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
        x = ops.cast(inputs, "float32")  # statistics in float32, always
        mean = ops.mean(x, axis=-1, keepdims=True)
        var = ops.var(x, axis=-1, keepdims=True)  # biased, as GPT-2
        x = (x - mean) * ops.rsqrt(var + self.epsilon)
        x = x * ops.cast(self.scale, "float32") + ops.cast(self.shift, "float32")
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config
