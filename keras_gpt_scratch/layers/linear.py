import keras
import tensorflow as tf
from keras import ops


def int8_matmul(x, kernel_t, kernel_scale, inputs_quantizer=None):
    """`x @ W` for an int8 kernel stored transposed, `(units, input_dim)`.

    One row (a batch-1 decoding step) multiplies by the dequantized weights:
    XLA then fuses the int8-to-float conversion into a matrix-vector loop that
    runs at memory speed. Several rows are quantized per row by
    `inputs_quantizer` and multiplied in int8, as Keras' int8 `Dense` does.
    Either way the kernel is read as `(units, input_dim)`: XLA's int8 dot with
    Keras' `(input_dim, units)` layout was 2-6 times slower here on few rows.

    Args:
        x: float tensor `(rows, input_dim)`.
        kernel_t: int8 tensor `(units, input_dim)`, `round(W.T * scale)`.
        kernel_scale: float tensor `(units,)`, the per-output scale.
        inputs_quantizer: Keras' activation quantizer (`AbsMaxQuantizer`), or
            `None` to always multiply by the dequantized weights.

    Returns:
        float32 tensor `(rows, units)`.
    """
    x = tf.cast(x, "float32")
    # Under a mixed policy Keras hands float variables over in the compute
    # dtype; the scales stay float32 here.
    kernel_scale = tf.cast(kernel_scale, "float32")

    def weight_only():
        # Inside a decoding loop XLA hoists a loop-invariant int8-to-float
        # conversion out of it, and then reads float weights every step. XOR
        # with a zero that it cannot prove is zero keeps the conversion in the
        # loop, fused into the matrix-vector product.
        zero = tf.minimum(tf.abs(x[0, 0]), 0.0)
        w = tf.cast(tf.bitwise.bitwise_xor(kernel_t, tf.cast(zero, "int8")), "float32")
        # XLA also fuses `x`'s cheap producers (LayerNorm's scale and shift,
        # GELU's last products) into that loop, which then recomputes them for
        # every weight: twice as slow. A divide is costly enough that XLA
        # leaves it, and so `x`, outside.
        x_apart = x / (1.0 + zero)
        return tf.matmul(x_apart, w, transpose_b=True) / kernel_scale

    def int8_dot():
        x_q, x_scale = inputs_quantizer(x, axis=-1)
        y = tf.matmul(x_q, kernel_t, transpose_b=True, output_type=tf.int32)
        return tf.cast(y, "float32") / (tf.cast(x_scale, "float32") * kernel_scale)

    if inputs_quantizer is None:
        return weight_only()
    return _if_one_row(x, weight_only, int8_dot)


def _if_one_row(x, one_row, many_rows):
    """`one_row()` if `x` has one row in all (every axis but the last),
    else `many_rows()`: picked while tracing when the shape is known, else
    by `tf.cond`, of which XLA, compiling per shape, keeps one branch."""
    rows = 1
    for dim in x.shape[:-1]:
        rows = None if rows is None or dim is None else rows * dim
    if rows is not None:
        return one_row() if rows == 1 else many_rows()
    return tf.cond(tf.reduce_prod(tf.shape(x)[:-1]) == 1, one_row, many_rows)


def _visible_here(tensor) -> bool:
    """Whether `tensor` belongs to the graph being traced or one around it,
    so a layer used elsewhere meanwhile (eagerly, in another function or
    thread) ignores a kernel that `GPTCausalLM.generate` set for its trace."""
    if not tf.is_symbolic_tensor(tensor):
        return True  # a value, usable anywhere
    graph = tensor.graph
    current = tf.compat.v1.get_default_graph()
    while current is not None:
        if current is graph:
            return True
        current = getattr(current, "outer_graph", None)
    return False


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class Linear(keras.layers.Dense):
    """`keras.layers.Dense` whose int8 mode is laid out for decoding.

    In float it is exactly `Dense` (the book's `nn.Linear`), with the same
    weights, names and saved files. After `quantize("int8")` it also keeps its
    int8 kernel transposed, `(units, input_dim)`, and multiplies through
    `int8_matmul`: on this project's first (AMD) CPU that made batch-1
    decoding of GPT-2 124M with int8 weights over three times as fast as
    with float32 weights, and 1.5 to 1.7 times on its later Intel CPU
    (BENCHMARKS.md), where Keras' own int8 `Dense` was barely faster than
    float32. The saved
    variables stay Keras' (`kernel`, `bias`, `kernel_scale`); the transposed
    copy (`units * input_dim` int8 bytes) is rebuilt on quantizing, on
    loading and by `set_weights` (here or on a `GPTBackbone`/`GPTCausalLM`),
    and is not saved. After assigning the int8 `_kernel` any other way, call
    `sync_int8_kernel()`. In float, batch-1 decoding with XLA multiplies by
    the kernel transposed, made once per `generate` call (`one_row_kernel`).

    Args:
        units: int. Output width.
        **kwargs: other keyword arguments passed to `keras.layers.Dense`.

    Call arguments:
        inputs: float tensor `(..., input_dim)`.

    Example:
    ```python
    layer = keras_gpt_scratch.Linear(3072, name="intermediate_dense")
    y = layer(np.zeros((2, 3, 768), "float32"))  # (2, 3, 3072)
    layer.quantize("int8")
    y8 = layer(np.zeros((2, 3, 768), "float32"))  # int8 weights
    ```
    """

    # Set by `GPTCausalLM` while it traces a decoding loop; see `call`.
    _one_row_kernel = None

    def call(self, inputs, training=None):
        kernel_t = self._one_row_kernel
        if kernel_t is None or not _visible_here(kernel_t):
            return super().call(inputs, training=training)
        return _if_one_row(
            inputs,
            lambda: self._one_row_call(inputs),
            lambda: super(Linear, self).call(inputs, training=training),
        )

    def one_row_kernel(self):
        """The kernel transposed, `(units, input_dim)`, in the compute dtype.

        XLA multiplies one row by it faster than by Keras' `(input_dim,
        units)` layout: on this project's CPU, chains of GPT-2 124M's layer
        kernels were read at 27-35 GB/s instead of 18-23 GB/s. `call` uses
        it while `_one_row_kernel` is set, as `GPTCausalLM.generate` does.
        """
        if self.quantization_mode is not None:
            raise ValueError(
                f"one_row_kernel() is for float kernels; {self.name!r} is "
                f"quantized ({self.quantization_mode!r}), and its int8 calls "
                "already use a transposed kernel."
            )
        return ops.transpose(ops.cast(self.kernel, self.compute_dtype))

    def _one_row_call(self, inputs):
        shape = ops.shape(inputs)
        # Any number of rows, as XLA first compiles both branches of `call`.
        x = ops.reshape(inputs, (-1, shape[-1]))
        y = tf.matmul(x, self._one_row_kernel, transpose_b=True)  # (rows, units)
        if self.bias is not None:
            # `y - (-b)`: XLA would fuse `y + b` into its own one-row product
            # loop, which ran on one thread at about 18 GB/s.
            y = ops.subtract(y, ops.negative(ops.cast(self.bias, y.dtype)))
        y = ops.reshape(y, (*shape[:-1], self.units))
        if self.activation is not None:
            y = self.activation(y)
        return y

    def quantize(self, mode=None, type_check=True, config=None):
        super().quantize(mode, type_check=False, config=config)
        self.sync_int8_kernel()

    def _int8_build(self, kernel_shape, config=None):
        super()._int8_build(kernel_shape, config)
        # A plain tf.Variable: not one of the layer's Keras weights, so it is
        # neither saved nor counted; XLA reads it like any other variable.
        # Made eagerly (as Keras makes its own) even if built in a trace.
        with tf.init_scope():
            self._kernel_t = tf.Variable(
                tf.zeros(kernel_shape[::-1], "int8"),
                trainable=False,
                name=f"{self.name}_kernel_t",
            )

    def load_own_variables(self, store):
        super().load_own_variables(store)
        self.sync_int8_kernel()

    def set_weights(self, weights):
        super().set_weights(weights)
        self.sync_int8_kernel()

    def sync_int8_kernel(self) -> None:
        """Rebuild the transposed int8 kernel from `_kernel` (int8 mode only)."""
        if self.quantization_mode == "int8":
            self._kernel_t.assign(tf.transpose(self._kernel))

    def _int8_call(self, inputs, training=None):
        quantizer = self.inputs_quantizer

        @ops.custom_gradient
        def matmul(inputs, kernel_t, kernel_scale):
            def grad_fn(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                # As Keras: the input gradient through the dequantized kernel.
                float_kernel_t = (
                    tf.cast(kernel_t, upstream.dtype)
                    / tf.cast(kernel_scale, upstream.dtype)[:, None]
                )
                return ops.matmul(upstream, float_kernel_t), None, None

            shape = ops.shape(inputs)
            x = ops.reshape(inputs, (-1, shape[-1]))  # (B*T, C)
            y = int8_matmul(x, kernel_t, kernel_scale, quantizer)
            y = ops.reshape(y, (*shape[:-1], self.units))
            return ops.cast(y, self.compute_dtype), grad_fn

        x = matmul(
            inputs,
            ops.convert_to_tensor(self._kernel_t),
            ops.convert_to_tensor(self.kernel_scale),
        )
        if self.lora_enabled:
            lora_x = ops.matmul(inputs, self.lora_kernel_a)
            lora_x = ops.matmul(lora_x, self.lora_kernel_b)
            x = ops.add(x, (self.lora_alpha / self.lora_rank) * lora_x)
            x = ops.cast(x, self.compute_dtype)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x


class SyncsInt8Kernels:
    """Mixin for models: `set_weights` also rebuilds every int8 `Linear`'s
    transposed kernel (Keras assigns the variables directly)."""

    def set_weights(self, weights):
        super().set_weights(weights)
        for layer in self._flatten_layers(include_self=False):
            if isinstance(layer, Linear):
                layer.sync_int8_kernel()
