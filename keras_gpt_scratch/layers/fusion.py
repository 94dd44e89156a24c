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


def fused(forward, backward):
    """`forward(*inputs) -> y` with gradient `backward(*inputs, dy) -> grads`.

    Args:
        forward: function of float tensors.
        backward: function of the same tensors and the upstream gradient
            `dy`, returning one gradient per input (a tuple if several).

    Returns:
        A differentiable function of the inputs that keeps only the inputs
        for its backward pass.
    """
    forward_xla = tf.function(forward, jit_compile=True, reduce_retracing=True)
    backward_xla = tf.function(backward, jit_compile=True, reduce_retracing=True)

    @tf.custom_gradient
    def fused_fn(*inputs):
        def grad(dy):
            return backward_xla(*inputs, dy)

        return forward_xla(*inputs), grad

    def fn(*inputs):
        if tf.executing_eagerly():
            return forward(*inputs)
        return fused_fn(*inputs)

    return fn
