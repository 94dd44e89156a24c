"""Pieces shared by the three attention layers (book, ch. 3)."""

import math

from keras import ops

# A large negative instead of -inf: a row with every key masked (a padding
# query) then gets a uniform softmax rather than NaN.
MASK_VALUE = -1e9


def causal_mask(query_length, key_length, offset=0):
    """`(query_length, key_length)` bool mask: query i sees keys <= offset + i."""
    rows = ops.expand_dims(ops.arange(query_length) + offset, 1)
    cols = ops.expand_dims(ops.arange(key_length), 0)
    return rows >= cols


def attend(query, key, value, mask=None, dropout=None, training=None):
    """softmax(Q K^T / sqrt(d_k)) V over the last two axes.

    `query` is `(..., T, D)`, `key`/`value` are `(..., S, D)`, `mask` is a
    bool tensor broadcastable to `(..., T, S)` (True = may attend). The
    scores and softmax are computed in float32, whatever the compute dtype.
    """
    head_dim = ops.shape(query)[-1]
    # Scaling q (T x D) is cheaper than scaling the scores (T x S).
    query = query * ops.cast(1.0 / math.sqrt(head_dim), query.dtype)
    scores = ops.matmul(query, ops.swapaxes(key, -1, -2))  # (..., T, S)
    scores = ops.cast(scores, "float32")
    if mask is not None:
        scores = ops.where(mask, scores, MASK_VALUE)
    weights = ops.softmax(scores, axis=-1)
    if dropout is not None:
        weights = dropout(weights, training=training)
    weights = ops.cast(weights, value.dtype)
    return ops.matmul(weights, value), weights  # (..., T, D), (..., T, S)
