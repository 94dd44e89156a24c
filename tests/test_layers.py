"""Each from-scratch layer against an independent NumPy version of its formula."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gpt_scratch as kgs

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype("float32")


def np_layer_norm(x, scale, shift, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + shift


def np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_dense(x, dense):
    w = keras.ops.convert_to_numpy(dense.kernel)
    out = x @ w
    if dense.use_bias:
        out = out + keras.ops.convert_to_numpy(dense.bias)
    return out


def np_attention(q, k, v, causal):
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        t, s = scores.shape[-2:]
        scores = np.where(np.tril(np.ones((t, s), bool)), scores, -np.inf)
    return np_softmax(scores) @ v


def np_mha(x, mha, padding_mask=None):
    b, t, c = x.shape
    h = mha.num_heads
    d = c // h

    def heads(y):
        return y.reshape(b, t, h, d).transpose(0, 2, 1, 3)

    q, k, v = (heads(np_dense(x, getattr(mha, n))) for n in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    allowed = np.tril(np.ones((t, t), bool))[None, None]
    if padding_mask is not None:
        allowed = allowed & padding_mask.astype(bool)[:, None, None, :]
    scores = np.where(allowed, scores, -1e9)
    ctx = (np_softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(b, t, c)
    return np_dense(ctx, mha.output_dense)


def randomize(layer):
    for w in layer.weights:
        w.assign(rand(*w.shape) * 0.5)


def test_layer_norm_matches_numpy():
    x = rand(2, 5, 16) * 3 + 1
    ln = kgs.LayerNorm()
    ln.build(x.shape)
    randomize(ln)
    expected = np_layer_norm(x, ln.scale.numpy(), ln.shift.numpy())
    np.testing.assert_allclose(ln(x), expected, atol=1e-5)
    assert ln.epsilon == 1e-5


def test_layer_norm_epsilon_matters():
    x = rand(1, 3, 8) * 1e-2  # variance comparable to eps
    a, b = kgs.LayerNorm(epsilon=1e-5), kgs.LayerNorm(epsilon=1e-3)
    assert not np.allclose(a(x), b(x), atol=1e-4)
    np.testing.assert_allclose(a(x), np_layer_norm(x, 1.0, 0.0, 1e-5), atol=1e-4)


@pytest.mark.parametrize("approximate", [True, False])
def test_gelu_matches_numpy(approximate):
    x = np.linspace(-6, 6, 101).astype("float32")
    if approximate:
        expected = np_gelu_tanh(x)
    else:
        expected = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(kgs.GELU(approximate)(x), expected, atol=1e-5)


def numeric_grad(f, x, upstream, eps=1e-2):
    """Central differences of sum(f(x) * upstream), in float64."""
    grad = np.zeros_like(x, dtype="float64")
    flat = grad.reshape(-1)
    for i in range(x.size):
        d = np.zeros(x.size)
        d[i] = eps
        d = d.reshape(x.shape)
        plus = (f(x + d) * upstream).sum()
        minus = (f(x - d) * upstream).sum()
        flat[i] = (plus - minus) / (2 * eps)
    return grad


@pytest.mark.parametrize("approximate", [True, False])
def test_gelu_gradient_matches_finite_differences(approximate):
    # The backward pass is a hand-written derivative (layers/fusion.py).
    x = np.linspace(-4, 4, 33).astype("float64")
    up = rand(33).astype("float64")
    if approximate:
        ref = np_gelu_tanh
    else:
        erf = np.vectorize(math.erf)

        def ref(v):
            return 0.5 * v * (1 + erf(v / math.sqrt(2)))

    gelu = kgs.GELU(approximate)

    def grad(xt):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = gelu(xt)
        return tape.gradient(y, xt, output_gradients=tf.constant(up, "float32"))

    xt = tf.constant(x.astype("float32"))
    expected = numeric_grad(ref, x, up, 1e-4)
    # In a graph the fused XLA pair runs; eagerly, plain ops (layers/fusion.py).
    np.testing.assert_allclose(tf.function(grad)(xt), expected, atol=1e-4)
    np.testing.assert_allclose(grad(xt), expected, atol=1e-4)


def test_layer_norm_gradients_match_finite_differences():
    x = (rand(2, 3, 6) * 2 + 0.5).astype("float64")
    up = rand(2, 3, 6).astype("float64")
    ln = kgs.LayerNorm()
    ln.build(x.shape)
    randomize(ln)
    scale, shift = (
        ln.scale.numpy().astype("float64"),
        ln.shift.numpy().astype("float64"),
    )
    xt = tf.constant(x.astype("float32"))

    @tf.function  # the fused XLA pair runs in graphs (layers/fusion.py)
    def grads(xt):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = ln(xt)
        return tape.gradient(
            y, [xt, ln.scale, ln.shift], output_gradients=tf.constant(up, "float32")
        )

    dx, dscale, dshift = grads(xt)
    np.testing.assert_allclose(
        dx,
        numeric_grad(lambda v: np_layer_norm(v, scale, shift), x, up, 1e-4),
        atol=1e-3,
    )
    np.testing.assert_allclose(
        dscale,
        numeric_grad(lambda s: np_layer_norm(x, s, shift), scale, up, 1e-4),
        atol=1e-3,
    )
    np.testing.assert_allclose(dshift, up.sum((0, 1)), atol=1e-5)


def test_gelu_forms_differ():
    x = np.array([1.5], "float32")
    assert abs(float(kgs.GELU(True)(x)[0]) - float(kgs.GELU(False)(x)[0])) > 1e-5


def test_feed_forward_matches_numpy():
    x = rand(2, 4, 8)
    ff = kgs.FeedForward()
    ff.build(x.shape)
    randomize(ff)
    assert ff.intermediate_dense.kernel.shape == (8, 32)
    hidden = np_gelu_tanh(np_dense(x, ff.intermediate_dense))
    np.testing.assert_allclose(ff(x), np_dense(hidden, ff.output_dense), atol=1e-4)


def test_self_attention_matches_numpy():
    x = rand(2, 6, 3)
    att = kgs.SelfAttention(output_dim=4)
    out, weights = att(x, return_attention_scores=True)
    q, k, v = (np_dense(x, getattr(att, n)) for n in ("query", "key", "value"))
    np.testing.assert_allclose(out, np_attention(q, k, v, causal=False), atol=1e-5)
    # Not causal: the first position attends to later ones.
    assert float(weights[0, 0, -1]) > 0


def test_causal_self_attention_matches_numpy():
    x = rand(2, 6, 3)
    att = kgs.CausalSelfAttention(output_dim=4, dropout=0.5)
    out, weights = att(x, return_attention_scores=True)  # inference: no dropout
    q, k, v = (np_dense(x, getattr(att, n)) for n in ("query", "key", "value"))
    np.testing.assert_allclose(out, np_attention(q, k, v, causal=True), atol=1e-5)
    np.testing.assert_array_equal(np.triu(weights[0], 1), 0)


def test_causal_self_attention_dropout_only_in_training():
    x = rand(1, 8, 4)
    att = kgs.CausalSelfAttention(output_dim=4, dropout=0.5)
    np.testing.assert_allclose(att(x), att(x))
    assert not np.allclose(att(x, training=True), att(x))


def test_multi_head_attention_matches_numpy():
    x = rand(2, 5, 12)
    mha = kgs.MultiHeadAttention(num_heads=3)
    mha.build(x.shape)
    randomize(mha)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], "int32")
    np.testing.assert_allclose(mha(x), np_mha(x, mha), atol=1e-4)
    np.testing.assert_allclose(
        mha(x, padding_mask=mask), np_mha(x, mha, mask), atol=1e-4
    )


def test_multi_head_attention_one_head_equals_causal_self_attention():
    x = rand(2, 7, 8)
    single = kgs.CausalSelfAttention(output_dim=8, qkv_bias=True)
    single.build(x.shape)
    randomize(single)
    mha = kgs.MultiHeadAttention(num_heads=1, qkv_bias=True)
    mha.build(x.shape)
    for name in ("query", "key", "value"):
        getattr(mha, name).set_weights(getattr(single, name).get_weights())
    # Identity output projection: what remains is the single-head layer.
    mha.output_dense.set_weights([np.eye(8, dtype="float32"), np.zeros(8, "float32")])
    np.testing.assert_allclose(mha(x), single(x), atol=1e-5)


def test_multi_head_attention_cache_matches_full_pass():
    x = rand(2, 6, 8)
    mha = kgs.MultiHeadAttention(num_heads=2)
    full = mha(x)
    cache = np.zeros((2, 2, 6, 2, 4), "float32")
    out, cache = mha(x[:, :4], cache=cache, cache_update_index=0)
    np.testing.assert_allclose(out, full[:, :4], atol=1e-5)
    for i in (4, 5):
        out, cache = mha(x[:, i : i + 1], cache=cache, cache_update_index=i)
        np.testing.assert_allclose(out[:, 0], full[:, i], atol=1e-5)


def test_multi_head_attention_pair_cache_equals_stacked_cache():
    x = rand(2, 6, 8)
    mha = kgs.MultiHeadAttention(num_heads=2)
    full = mha(x)
    stacked = np.zeros((2, 2, 6, 2, 4), "float32")  # keras_hub's (B, 2, S, H, D)
    pair = (np.zeros((2, 2, 6, 4), "float32"),) * 2  # ours: (B, H, S, D) each
    out_s, stacked = mha(x[:, :5], cache=stacked, cache_update_index=0)
    out_p, pair = mha(x[:, :5], cache=pair, cache_update_index=0)
    assert stacked.shape == (2, 2, 6, 2, 4) and isinstance(pair, tuple)
    # The same keys, in the two layouts.
    np.testing.assert_allclose(np.transpose(pair[0], (0, 2, 1, 3)), stacked[:, 0])
    out_s, _ = mha(x[:, 5:], cache=stacked, cache_update_index=5)
    out_p, _ = mha(x[:, 5:], cache=pair, cache_update_index=5)
    np.testing.assert_allclose(out_p, out_s, atol=1e-6)
    np.testing.assert_allclose(out_p[:, 0], full[:, 5], atol=1e-5)


def test_multi_head_attention_heads_must_divide_width():
    with pytest.raises(ValueError, match=r"\(10\).*\(4\)"):
        kgs.MultiHeadAttention(num_heads=4)(rand(1, 2, 10))


def test_transformer_block_matches_numpy():
    x = rand(2, 4, 8)
    block = kgs.TransformerBlock(num_heads=2, intermediate_dim=16, dropout=0.3)
    block.build(x.shape)
    randomize(block)

    def ln(y, layer):
        return np_layer_norm(y, layer.scale.numpy(), layer.shift.numpy())

    h = x + np_mha(ln(x, block.attention_norm), block.attention)
    ff = block.feed_forward
    inner = np_gelu_tanh(
        np_dense(ln(h, block.feed_forward_norm), ff.intermediate_dense)
    )
    expected = h + np_dense(inner, ff.output_dense)
    np.testing.assert_allclose(block(x), expected, atol=1e-3)
    # Dropout on the shortcut branches in training only.
    assert not np.allclose(block(x, training=True), block(x), atol=1e-3)


def test_token_embedding_lookup_and_tied_head():
    emb = kgs.TokenEmbedding(10, 4)
    ids = np.array([[1, 9, 0]])
    table = emb(ids)  # builds
    e = emb.embeddings.numpy()
    np.testing.assert_allclose(table, e[ids])
    h = rand(1, 3, 4)
    np.testing.assert_allclose(emb(h, reverse=True), h @ e.T, atol=1e-5)


def test_token_embedding_untied_head():
    emb = kgs.TokenEmbedding(10, 4, tie_weights=False)
    emb(np.array([[1]]))
    h = rand(1, 2, 4)
    head = emb.reverse_embeddings.numpy()
    assert head.shape == (4, 10)
    np.testing.assert_allclose(emb(h, reverse=True), h @ head, atol=1e-5)


def test_token_embedding_rejects_out_of_range_ids_eagerly():
    emb = kgs.TokenEmbedding(10, 4)
    with pytest.raises(
        ValueError, match=r"Token id 12 is outside the vocabulary \[0, 10\)"
    ):
        emb(np.array([[1, 12, 3]]))
    with pytest.raises(ValueError, match="Token id -1"):
        emb(np.array([[-1]]))


def test_token_embedding_rejects_out_of_range_ids_in_graph():
    emb = kgs.TokenEmbedding(10, 4)
    emb(np.array([[1]]))
    fn = tf.function(lambda ids: emb(ids))
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"outside the vocabulary.*\n?.*13"
    ):
        fn(tf.constant([[1, 13]]))


def test_token_embedding_graph_check_names_the_first_bad_id_and_allows_none():
    emb = kgs.TokenEmbedding(10, 4)
    emb(np.array([[1]]))
    fn = tf.function(lambda ids: emb(ids), reduce_retracing=True)
    # No ids at all (an empty half of a one-row batch) pass the check.
    assert fn(tf.zeros((0, 3), "int32")).shape == (0, 3, 4)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"\[The first bad id is\] \[13\]"
    ):
        fn(tf.constant([[1, 13, 11]]))


def test_position_embedding_slices_from_start_index():
    pos = kgs.PositionEmbedding(sequence_length=8)
    x = np.zeros((2, 3, 4), "float32")
    out = pos(x)
    table = pos.embeddings.numpy()
    np.testing.assert_allclose(out, table[:3])
    np.testing.assert_allclose(pos(x, start_index=5), table[5:8])


def test_position_embedding_start_is_a_run_time_input_under_xla():
    """A start given to a compiled function (a decoding position) stays an
    input of the compiled program: as a slice's start XLA made it a constant,
    and compiled the function again for every position."""
    pos = kgs.PositionEmbedding(sequence_length=8)
    x = np.zeros((1, 2, 4), "float32")
    pos(x)
    rows_from = tf.function(lambda start: pos(x, start_index=start), jit_compile=True)
    hlo = rows_from.experimental_get_compiler_ir(tf.constant(3))(stage="hlo")
    entry = next(line for line in hlo.splitlines() if line.startswith("ENTRY"))
    assert "s32[]" in entry, entry
    table = pos.embeddings.numpy()
    for i in (0, 3, 6):
        np.testing.assert_allclose(rows_from(tf.constant(i)), table[i : i + 2])
    np.testing.assert_allclose(pos(x, start_index=tf.constant(5, tf.int64)), table[5:7])
    with pytest.raises(tf.errors.InvalidArgumentError, match="negative"):
        pos(x, start_index=tf.constant(-1))  # a gather would wrap around


def test_position_embedding_rejects_too_long_input():
    pos = kgs.PositionEmbedding(sequence_length=4)
    with pytest.raises(ValueError, match="context length.*4"):
        pos(np.zeros((1, 5, 2), "float32"))


LAYERS = [
    (kgs.LayerNorm, {"epsilon": 1e-4}, (2, 3, 8)),
    (kgs.GELU, {"approximate": False}, (2, 3, 8)),
    (kgs.Linear, {"units": 5, "use_bias": False}, (2, 3, 8)),
    (kgs.FeedForward, {"intermediate_dim": 12}, (2, 3, 8)),
    (kgs.SelfAttention, {"output_dim": 6, "qkv_bias": True}, (2, 3, 8)),
    (kgs.CausalSelfAttention, {"output_dim": 6, "dropout": 0.2}, (2, 3, 8)),
    (kgs.MultiHeadAttention, {"num_heads": 2, "qkv_bias": False}, (2, 3, 8)),
    (kgs.TransformerBlock, {"num_heads": 2, "intermediate_dim": 16}, (2, 3, 8)),
    (kgs.PositionEmbedding, {"sequence_length": 5}, (2, 3, 8)),
]


@pytest.mark.parametrize(
    "cls,kwargs,shape", LAYERS, ids=lambda v: getattr(v, "__name__", "")
)
def test_layer_config_round_trip(cls, kwargs, shape):
    layer = cls(**kwargs, name="probe")
    x = rand(*shape)
    y = layer(x)
    config = layer.get_config()
    for key, value in kwargs.items():
        assert config[key] == value
    # Through Keras' own (de)serialization, by registered name.
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(clone) is cls and clone.get_config() == config
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x), y, atol=1e-6)


def test_token_embedding_config_round_trip():
    emb = kgs.TokenEmbedding(11, 4, tie_weights=False)
    emb(np.array([[1]]))
    clone = kgs.TokenEmbedding.from_config(emb.get_config())
    assert clone.vocabulary_size == 11 and not clone.tie_weights
    clone(np.array([[1]]))
    assert len(clone.weights) == 2


def test_mixed_bfloat16_keeps_softmax_and_layer_norm_statistics_in_float32():
    x = rand(2, 4, 8) + 100.0  # a large mean: bf16 statistics would lose it
    ln = kgs.LayerNorm(dtype="mixed_bfloat16")
    y = ln(x)
    assert y.dtype == tf.bfloat16
    # Keras casts the input to bf16 first; from there float32 statistics must
    # reproduce the exact normalization up to bf16 output rounding.
    x16 = tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy()
    ref = np_layer_norm(x16, 1.0, 0.0)
    np.testing.assert_allclose(tf.cast(y, tf.float32), ref, atol=0.02)

    mha = kgs.MultiHeadAttention(num_heads=2, dtype="mixed_bfloat16")
    out = mha(x - 100.0)
    assert out.dtype == tf.bfloat16
    assert mha.query.kernel.dtype == "float32"  # variables stay float32
    # The attention weights are a float32 softmax: rows sum to 1 exactly-ish.
    att = kgs.CausalSelfAttention(output_dim=8, dtype="mixed_bfloat16")
    _, weights = att(x - 100.0, return_attention_scores=True)
    np.testing.assert_allclose(
        tf.reduce_sum(tf.cast(weights, tf.float32), -1), 1.0, atol=1e-2
    )
