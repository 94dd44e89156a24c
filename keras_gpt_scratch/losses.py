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
backward over 4,096 x 50,257 logits took 292 ms against 668 ms for the Keras
loss (`python tools/bench.py --cases loss`, BENCHMARKS.md).

`head_cross_entropy` goes further for training: it takes the hidden states and
the tied embedding table instead of logits, and runs the vocabulary projection,
the loss and both of the projection's gradients a chunk of rows at a time (two
chunks overlap), so the full logits are never held (`GPTCausalLM.train_step`
uses it).
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


def _bad_label(label):
    which = "A label" if label is None else f"Label {label}"
    return (
        f"{which} is outside the vocabulary [0, vocabulary_size). Labels "
        "are next-token ids; to leave positions out of the loss (instead "
        "of -100 labels), give them sample_weight 0, e.g. the padding mask."
    )


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

    # XLA's gather would clamp a bad label silently, and Keras' kernel names it.
    labels = check_ids(tf.cast(labels, "int32"), vocabulary_size, _bad_label)
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


# Float32 logits per chunk in `head_cross_entropy`: 2**26 is 256 MB, 1,335
# rows of GPT-2's vocabulary; a 16 x 256 batch's logits are 823 MB. Fewer,
# larger chunks measured faster (each adds its table gradient to the total).
HEAD_CHUNK_LOGITS = 2**26


def _chunk_loss(logits, labels, weights, with_grad, with_hits):
    top = tf.reduce_max(logits, axis=-1, keepdims=True)  # (n, 1)
    exp = tf.exp(logits - top)  # (n, V)
    total = tf.reduce_sum(exp, axis=-1, keepdims=True)  # (n, 1)
    picked = tf.gather(logits, labels, batch_dims=1)  # (n,)
    losses = top[:, 0] + tf.math.log(total[:, 0]) - picked
    out = [tf.reduce_sum(losses * weights)]
    if with_grad:
        # d sum(w * loss) / d logits, from the same exp(logits - max).
        one_hot = tf.one_hot(labels, tf.shape(logits)[-1], dtype=logits.dtype)
        out.append((exp / total - one_hot) * weights[:, None])
    if with_hits:
        # A hit is argmax == label. The label's logit being the maximum says
        # the same in one comparison, unless the maximum is tied (argmax takes
        # the first); only then pay for the argmax.
        maximal = picked >= top[:, 0]
        ties = tf.reduce_sum(tf.cast(tf.equal(logits, top), "int32"), axis=-1)
        hits = tf.cond(
            tf.reduce_any(maximal & (ties > 1)),
            lambda: tf.equal(
                tf.argmax(logits, axis=-1, output_type=labels.dtype), labels
            ),
            lambda: maximal,
        )
        out.append(tf.cast(hits, logits.dtype))
    return tuple(out)


# XLA: each one pass over a chunk's logits (layers/fusion.py explains why).
_chunk_loss_xla = {
    (with_grad, with_hits): tf.function(
        lambda logits, labels, weights, g=with_grad, h=with_hits: _chunk_loss(
            logits, labels, weights, g, h
        ),
        jit_compile=True,
        reduce_retracing=True,
        autograph=False,
    )
    for with_grad in (False, True)
    for with_hits in (False, True)
}


def head_cross_entropy(
    hidden_states,
    table,
    labels,
    weights,
    gradients: bool = True,
    table_gradient: bool = True,
    hits: bool = False,
    transposed_table: bool = False,
    chunk_logits: int = HEAD_CHUNK_LOGITS,
    overlap_chunks: bool = True,
):
    """Weighted cross-entropy of `hidden_states @ table.T`, never all logits at once.

    For each chunk of rows it computes the logits, the loss, and the loss's
    gradients for the hidden states and the table, and keeps only those
    (the gradient of a weighted sum is known before the backward pass, up to
    the scalar upstream gradient). Memory is a few chunks of logits (the
    loop overlaps consecutive chunks) and their gradients instead of the
    whole `(rows, vocabulary_size)` tensor; the work is the same three
    matmuls as unfused.

    Args:
        hidden_states: float tensor `(rows, hidden_dim)`, in the table's
            dtype. Under float16 the gradient of the unscaled loss can
            underflow; `GPTCausalLM` leaves mixed_float16 to Keras' steps.
        table: float tensor `(vocabulary_size, hidden_dim)`, the tied
            embedding table, in the same dtype.
        labels: int32 tensor `(rows,)`, each in `[0, vocabulary_size)`.
        weights: float tensor `(rows,)`, each row's loss weight.
        gradients: whether to compute gradients at all (`False` to evaluate:
            the result is then constant).
        table_gradient: whether to compute the table's gradient (`False` when
            the table is frozen, saving a third of the work).
        hits: whether to also return, per row, whether the logits' argmax is
            the label (for accuracy metrics).
        transposed_table: the table is `(hidden_dim, vocabulary_size)`, an
            untied head's layout.
        chunk_logits: the most logits per chunk; the rows are split into
            the fewest equal chunks within it.
        overlap_chunks: run the next chunk's logits product while the
            current chunk's loss and gradients run (two chunks alive at once);
            `False` runs them one after another, for callers that already
            overlap two heads (`GPTCausalLM.interleaved_halves`).

    Returns:
        The float32 scalar `sum(weights * cross_entropy)`, differentiable in
        `hidden_states` and `table`; with `hits=True`, the pair of it and a
        float32 `(rows,)` tensor, 1 where the argmax is the label, else 0.
    """
    vocabulary_size = tf.shape(table)[1 if transposed_table else 0]
    labels = check_ids(tf.cast(labels, "int32"), vocabulary_size, _bad_label)
    weights = tf.cast(weights, "float32")
    rows = tf.shape(hidden_states)[0]
    # XLA would clamp an out-of-range read instead of failing.
    checks = [
        tf.debugging.assert_equal(
            tf.size(labels), rows, "labels must have one per row"
        ),
        tf.debugging.assert_equal(
            tf.size(weights), rows, "weights must have one per row"
        ),
    ]
    with tf.control_dependencies(checks):
        labels = tf.identity(labels)

    table_gradient = table_gradient and gradients
    chunk_loss = _chunk_loss_xla[gradients, hits]

    def run(hidden_states, table):
        width = tf.shape(hidden_states)[1]
        most = tf.maximum(chunk_logits // vocabulary_size, 1)
        steps = tf.maximum((rows + most - 1) // most, 1)
        chunk = tf.maximum((rows + steps - 1) // steps, 1)
        pad = steps * chunk - rows
        # Padded rows have weight 0: no loss, no gradient.
        h = tf.reshape(tf.pad(hidden_states, [[0, pad], [0, 0]]), (-1, chunk, width))
        y = tf.reshape(tf.pad(labels, [[0, pad]]), (-1, chunk))
        w = tf.reshape(tf.pad(weights, [[0, pad]]), (-1, chunk))

        def body(i, loss_sum, d_table, d_hidden, hit_rows):
            logits = tf.matmul(h[i], table, transpose_b=not transposed_table)
            out = list(chunk_loss(tf.cast(logits, "float32"), y[i], w[i]))
            loss_sum += out.pop(0)
            if gradients:
                grad = tf.cast(out.pop(0), table.dtype)  # (chunk, V)
                # (chunk, V) @ (V, C), kept in float32 until scaled
                d_h = tf.matmul(grad, table, transpose_b=transposed_table)
                d_hidden = d_hidden.write(i, tf.cast(d_h, "float32"))
            if table_gradient:  # (V, chunk) @ (chunk, C), summed in float32
                d_t = (
                    tf.matmul(h[i], grad, transpose_a=True)
                    if transposed_table
                    else tf.matmul(grad, h[i], transpose_a=True)
                )
                d_t = tf.cast(d_t, "float32")
                d_table = d_t if d_table is None else d_table + d_t
            if hits:
                hit_rows = hit_rows.write(i, out.pop(0))
            return i + 1, loss_sum, d_table, d_hidden, hit_rows

        # The first chunk starts the table's gradient (no zeros to add to).
        first = body(
            tf.constant(0),
            tf.constant(0.0),
            None if table_gradient else tf.zeros((0, 0), "float32"),
            tf.TensorArray("float32", size=steps if gradients else 0),
            tf.TensorArray("float32", size=steps if hits else 0),
        )
        _, loss_sum, d_table, d_hidden, hit_rows = tf.while_loop(
            lambda i, *_: i < steps,
            body,
            first,
            # The next chunk's logits product overlaps this chunk's loss and
            # gradients: about 1.5% faster training for gpt_tiny at 0.4 GB
            # more peak RSS (still below keras_hub's).
            parallel_iterations=2 if overlap_chunks else 1,
        )
        if hits:
            outputs = loss_sum, tf.reshape(hit_rows.stack(), (-1,))[:rows]
        else:
            outputs = loss_sum
        if not gradients:
            return outputs
        d_hidden = tf.reshape(d_hidden.stack(), (-1, width))[:rows]  # (rows, C)

        def grad(d_loss, *unused_d_hits):  # hits are not differentiable
            d_loss = tf.cast(d_loss, "float32")
            return (
                tf.cast(d_loss * d_hidden, hidden_states.dtype),
                tf.cast(d_loss * d_table, table.dtype) if table_gradient else None,
            )

        return outputs, grad

    if not gradients:
        return run(tf.stop_gradient(hidden_states), tf.stop_gradient(table))
    return tf.custom_gradient(run)(hidden_states, table)
