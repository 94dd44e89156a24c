"""Fused elementwise pieces: one XLA-compiled pass forward, one backward.

Without XLA, TensorFlow runs `0.5 * x * (1 + tanh(...))` as eight separate
kernels, each reading and writing the whole tensor, and keeps every
intermediate for the backward pass. `fused` compiles a layer's forward math and
its hand-written derivative as two small XLA functions (even inside a step
that runs without XLA, so the matmuls stay on oneDNN) and saves only the
inputs for the backward pass. Inside an XLA-compiled step they are inlined.
Run eagerly (layer by layer, as the book's `generate` loop does), the plain
ops are used instead: XLA would compile again for every new input shape.
"""

import tensorflow as tf


def fused(forward, backward, residuals: bool = False):
    """`forward(*inputs) -> y` with gradient `backward(*inputs, dy) -> grads`.

    Args:
        forward: function of tensors. With `residuals=True` it returns
            `(y, *saved)`: tensors the backward pass needs besides the inputs
            (a loss's per-row log-sum-exp, say), kept instead of recomputed.
        backward: function of the same inputs, then any saved tensors, then
            the upstream gradient `dy`, returning one gradient per input (a
            tuple if several; `None` for integer inputs).
        residuals: whether `forward` returns saved tensors after `y`.

    Returns:
        A differentiable function of the inputs that keeps only the inputs
        (and any saved tensors) for its backward pass.
    """
    # Straight-line tensor math: AutoGraph has nothing to convert.
    options = dict(jit_compile=True, reduce_retracing=True, autograph=False)
    forward_xla = tf.function(forward, **options)
    backward_xla = tf.function(backward, **options)

    @tf.custom_gradient
    def fused_fn(*inputs):
        out = forward_xla(*inputs)
        y, saved = (out[0], tuple(out[1:])) if residuals else (out, ())

        def grad(dy):
            return backward_xla(*inputs, *saved, dy)

        return y, grad

    def fn(*inputs):
        if tf.executing_eagerly():
            out = forward(*inputs)
            return out[0] if residuals else out
        return fused_fn(*inputs)

    return fn
