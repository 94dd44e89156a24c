import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class GELU(keras.layers.Layer):
    """Gaussian Error Linear Unit, as used by GPT-2 (book, ch. 4).

    GPT-2 was trained with the tanh approximation
    `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`; the exact form
    `0.5 x (1 + erf(x / sqrt(2)))` is available with `approximate=False`.

    Args:
        approximate: bool. Use the tanh approximation (GPT-2's form).
            Defaults to `True`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        inputs: a float tensor of any shape.

    Example:
    ```python
    gelu = keras_gpt_scratch.GELU()
    gelu(np.array([-1.0, 0.0, 1.0]))  # [-0.1588, 0.0, 0.8412]
    ```
    """

    def __init__(self, approximate: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.approximate = approximate

    def call(self, inputs):
        x = inputs
        if self.approximate:
            c = math.sqrt(2.0 / math.pi)
            return 0.5 * x * (1.0 + ops.tanh(c * (x + 0.044715 * x * x * x)))
        return 0.5 * x * (1.0 + ops.erf(x / math.sqrt(2.0)))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"approximate": self.approximate})
        return config
