import math

import keras
from keras import ops

from keras_gpt_scratch.layers.fusion import fused

_C = math.sqrt(2.0 / math.pi)


def gelu_tanh(x):
    """GPT-2's GELU, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`."""
    return 0.5 * x * (1.0 + ops.tanh(_C * (x + 0.044715 * x * x * x)))


def _gelu_tanh_grad(x, dy):
    # d/dx of gelu_tanh, from x alone: nothing else is kept for backward.
    t = ops.tanh(_C * (x + 0.044715 * x * x * x))
    dt = _C * (1.0 + 3.0 * 0.044715 * x * x)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dt)


def gelu_erf(x):
    """The exact GELU, `0.5 x (1 + erf(x / sqrt(2)))`."""
    return 0.5 * x * (1.0 + ops.erf(x / math.sqrt(2.0)))


def _gelu_erf_grad(x, dy):
    pdf = ops.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dy * (0.5 * (1.0 + ops.erf(x / math.sqrt(2.0))) + x * pdf)


_fused_gelu_tanh = fused(gelu_tanh, _gelu_tanh_grad)
_fused_gelu_erf = fused(gelu_erf, _gelu_erf_grad)


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
        # The formulas are `gelu_tanh` and `gelu_erf` above; `fused` runs
        # each as one XLA pass with its derivative (see layers/fusion.py).
        if self.approximate:
            return _fused_gelu_tanh(inputs)
        return _fused_gelu_erf(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"approximate": self.approximate})
        return config
