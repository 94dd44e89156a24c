"""Next-token cross-entropy on vocabulary logits, computed cheaply.

A GPT's loss reads a `(batch * sequence, 50257)` float32 logits tensor: 823 MB
for 16 x 256 tokens. TensorFlow's `SparseSoftmaxCrossEntropyWithLogits` kernel,
what `keras.losses.SparseCategoricalCrossentropy` runs, makes several passes
over it on one thread and keeps a full-size gradient from the forward pass.
Here the forward pass keeps only the per-row log-sum-exp besides the logits
(the backward pass recomputes the softmax from them), and both passes are
small XLA-compiled functions (fused, multi-threaded; `layers/fusion.py`)
even when the training step itself runs without XLA; run eagerly, it uses
the plain ops. On this project's 2-core CPU, forward and
backward over 4,096 x 50,257 logits took 288 ms against 676 ms for the Keras
loss (`python tools/bench.py --cases loss`, BENCHMARKS.md).
"""

import keras
import tensorflow as tf

from keras_gpt_scratch.layers.fusion import fused
from keras_gpt_scratch.layers.token_embedding import check_ids


def _forward(logits, labels):
    lse = tf.reduce_logsumexp(logits, axis=-1)  # (N,)
    return lse - tf.gather(logits, labels, batch_dims=1), lse


def _backward(logits, labels, lse, upstream):
    # d loss / d logits = softmax(logits) - one_hot(label), recomputed here
    # from the saved log-sum-exp instead of being stored since the forward.
    probs = tf.exp(logits - lse[:, None])
    one_hot = tf.one_hot(labels, tf.shape(logits)[-1], dtype=logits.dtype)
    return (probs - one_hot) * upstream[:, None], None


# One XLA pass each way (layers/fusion.py); the log-sum-exp is kept.
_cross_entropy = fused(_forward, _backward, residuals=True)


def sparse_cross_entropy(labels, logits):
    """Per-token cross-entropy of integer `labels` under `logits`.

    Args:
        labels: int tensor `(...)`, each in `[0, vocabulary_size)`.
        logits: float tensor `(..., vocabulary_size)`; computed in float32.

    Returns:
        float32 tensor `(...)`, the same as
        `tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)`.
    """
    logits = tf.cast(logits, "float32")
    vocabulary_size = tf.shape(logits)[-1]

    def bad_label(label):
        which = "A label" if label is None else f"Label {label}"
        return (
            f"{which} is outside the vocabulary [0, vocabulary_size). Labels "
            "are next-token ids; to leave positions out of the loss (instead "
            "of -100 labels), give them sample_weight 0, e.g. the padding mask."
        )

    # XLA's gather would clamp a bad label silently, and Keras' kernel names it.
    labels = check_ids(tf.cast(labels, "int32"), vocabulary_size, bad_label)
    shape = tf.shape(labels)
    flat = _cross_entropy(
        tf.reshape(logits, (-1, tf.shape(logits)[-1])), tf.reshape(labels, (-1,))
    )
    return tf.reshape(flat, shape)


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class CrossEntropy(keras.losses.Loss):
    """Next-token cross-entropy from logits, like PyTorch's `F.cross_entropy`.

    Gives the same values as
    `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`, faster and
    with less memory on a large vocabulary (see the module docstring).
    `GPTCausalLM.compile(loss="auto")` uses it. Sample weights (the padding
    mask) and reductions work as for any Keras loss.

    Args:
        reduction: Keras loss reduction; defaults to the mean over tokens.
        name: the loss name.

    Example:
    ```python
    loss = keras_gpt_scratch.CrossEntropy()
    loss(np.array([[2]]), np.array([[[0.0, 1.0, 3.0]]]))  # 0.1698
    ```
    """

    def __init__(self, reduction="sum_over_batch_size", name="cross_entropy", **kwargs):
        super().__init__(reduction=reduction, name=name, **kwargs)

    def call(self, y_true, y_pred):
        return sparse_cross_entropy(y_true, y_pred)
