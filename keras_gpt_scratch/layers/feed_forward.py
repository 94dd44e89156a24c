import keras

from keras_gpt_scratch.layers.gelu import GELU
from keras_gpt_scratch.layers.init_utils import clone_initializer
from keras_gpt_scratch.layers.linear import Linear


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class FeedForward(keras.layers.Layer):
    """The transformer's position-wise feed-forward block (book, ch. 4).

    `Dense(intermediate_dim) -> GELU -> Dense(hidden_dim)`. GPT-2 uses
    `intermediate_dim = 4 * hidden_dim`, the default here.

    Args:
        intermediate_dim: int. Width of the inner layer. Defaults to four
            times the input width.
        approximate_gelu: bool. Use GELU's tanh approximation (GPT-2).
        kernel_initializer: initializer for both kernels. GPT-2 uses a
            normal distribution with standard deviation 0.02.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        inputs: a float tensor of shape `(batch, sequence, hidden_dim)`.

    Example:
    ```python
    ff = keras_gpt_scratch.FeedForward()
    y = ff(np.zeros((2, 3, 768), "float32"))  # (2, 3, 768), inner width 3072
    ```
    """

    def __init__(
        self,
        intermediate_dim: int | None = None,
        approximate_gelu: bool = True,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.intermediate_dim = intermediate_dim
        self.approximate_gelu = approximate_gelu
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        inner = self.intermediate_dim or 4 * hidden_dim
        # === Layers ===
        self.intermediate_dense = Linear(
            inner,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="intermediate_dense",
        )
        self.intermediate_dense.build(input_shape)
        self.activation = GELU(
            approximate=self.approximate_gelu,
            dtype=self.dtype_policy,
            name="gelu",
        )
        self.activation.build((*input_shape[:-1], inner))
        self.output_dense = Linear(
            hidden_dim,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="output_dense",
        )
        self.output_dense.build((*input_shape[:-1], inner))

    def call(self, inputs):
        x = self.intermediate_dense(inputs)  # (B, T, 4C)
        x = self.activation(x)
        return self.output_dense(x)  # (B, T, C)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "approximate_gelu": self.approximate_gelu,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
