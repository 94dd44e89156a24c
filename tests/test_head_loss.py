"""The fused head + loss (`head_cross_entropy`) and the train step that uses it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gpt_scratch as kgs
from keras_gpt_scratch.losses import head_cross_entropy
from keras_gpt_scratch.models import gpt_causal_lm

RNG = np.random.default_rng(0)
VOCAB = 97


def unfused(hidden, table, labels, weights, transposed):
    logits = tf.matmul(hidden, table, transpose_b=not transposed)
    per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    hits = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels)
    return tf.reduce_sum(per_row * weights), tf.cast(hits, "float32")


def value_and_grads(fn, hidden, table):
    hidden, table = tf.Variable(hidden), tf.Variable(table)

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            total, hits = fn(hidden, table)
            loss = 0.37 * total  # an upstream gradient other than 1
        return loss, hits, tape.gradient(loss, [hidden, table])

    loss, hits, grads = run()
    return float(loss), hits.numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("rows", [1, 29])
def test_matches_unfused_loss_gradients_and_hits_over_padded_chunks(transposed, rows):
    hidden = RNG.standard_normal((rows, 8)).astype("float32")
    shape = (8, VOCAB) if transposed else (VOCAB, 8)
    table = RNG.standard_normal(shape).astype("float32")
    labels = RNG.integers(0, VOCAB, rows).astype("int32")
    labels[::3] = np.argmax(hidden @ (table if transposed else table.T), -1)[
        ::3
    ]  # some hits
    weights = RNG.uniform(0, 1, rows).astype("float32")
    weights[-1] = 0.0

    def fused(h, t):
        # 5 rows per chunk: 29 rows run as 6 chunks of 5, one padded row.
        return head_cross_entropy(
            h,
            t,
            labels,
            weights,
            hits=True,
            transposed_table=transposed,
            chunk_logits=5 * VOCAB,
        )

    got = value_and_grads(fused, hidden, table)
    want = value_and_grads(
        lambda h, t: unfused(h, t, labels, weights, transposed), hidden, table
    )
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    np.testing.assert_array_equal(got[1], want[1])
    assert got[1][::3].all()
    for g, w in zip(got[2], want[2], strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)
    assert not got[2][0][-1].any()  # weight 0: no gradient


def test_hits_follow_argmax_on_ties():
    # A zero table ties every logit; argmax takes index 0, and so must hits.
    hidden = RNG.standard_normal((6, 4)).astype("float32")
    table = np.zeros((VOCAB, 4), "float32")
    labels = tf.constant([0, 5, 0, 96, 1, 0], "int32")
    _, hits = head_cross_entropy(hidden, table, labels, tf.ones(6), hits=True)
    np.testing.assert_array_equal(hits, [1, 0, 1, 0, 0, 1])


def test_frozen_table_gets_no_gradient():
    hidden = tf.Variable(RNG.standard_normal((3, 4)).astype("float32"))
    table = tf.Variable(RNG.standard_normal((VOCAB, 4)).astype("float32"))
    labels = tf.constant([1, 2, 3])
    with tf.GradientTape() as tape:
        loss = head_cross_entropy(
            hidden, table, labels, tf.ones(3), table_gradient=False
        )
    d_hidden, d_table = tape.gradient(loss, [hidden, table])
    assert d_table is None
    assert np.abs(d_hidden.numpy()).sum() > 0


# === The train step ===


def small_backbone(**overrides):
    config = dict(
        vocabulary_size=VOCAB,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        max_sequence_length=16,
        dropout=0.0,
    )
    return kgs.GPTBackbone(**{**config, **overrides})


def regularize(layer):
    layer.activity_regularizer = keras.regularizers.L2(1e-2)


def train(
    fused,
    tie=True,
    weighted_metrics="auto",
    sample_weight="mask",
    loss="auto",
    dtype="float32",
    metrics=None,
    jit_compile=False,
    change=None,
):
    keras.utils.set_random_seed(1)
    lm = kgs.GPTCausalLM(small_backbone(dtype=dtype, tie_weights=tie), None)
    lm.fused_head_loss = fused
    if change:
        change(lm)
    lm.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=loss,
        metrics=metrics,
        weighted_metrics=weighted_metrics,
        jit_compile=jit_compile,
    )
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, (6, 13)).astype("int32")
    mask = np.ones((6, 12), bool)
    mask[0, 7:] = False
    mask[3, 2:] = False
    weights = {
        "mask": mask,
        "uneven": mask * rng.uniform(0, 2, mask.shape).astype("float32"),
        "per-sequence": np.array([[1], [0.5], [2], [1], [0], [1]], "float32"),
        None: None,
    }[sample_weight]
    x = {"token_ids": ids[:, :-1], "padding_mask": mask}
    history = lm.fit(
        x,
        ids[:, 1:],
        sample_weight=weights,
        batch_size=3,
        epochs=2,
        verbose=0,
        shuffle=False,
    )
    scores = lm.evaluate(
        x, ids[:, 1:], sample_weight=weights, batch_size=3, verbose=0, return_dict=True
    )
    return history.history, lm.get_weights(), scores


def count_head_calls(monkeypatch, argument="gradients"):
    """Each fused head call's `argument`, as the model's steps are traced."""
    calls = []
    original = gpt_causal_lm.head_cross_entropy
    monkeypatch.setattr(
        gpt_causal_lm,
        "head_cross_entropy",
        lambda *a, **k: calls.append(k[argument]) or original(*a, **k),
    )
    return calls


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"tie": False},
        {"weighted_metrics": []},
        {"sample_weight": None},
        {"sample_weight": "uneven"},
        {"sample_weight": "per-sequence"},
        {"dtype": "mixed_bfloat16"},
        {"metrics": ["accuracy"], "weighted_metrics": []},
        {"jit_compile": True},
        {"change": lambda lm: regularize(lm.backbone.get_layer("transformer_layer_0"))},
        {"change": lambda lm: setattr(lm.backbone.token_embedding, "trainable", False)},
    ],
    ids=[
        "tied",
        "untied",
        "no-metrics",
        "no-weights",
        "uneven-weights",
        "sequence-weights",
        "bf16",
        "unweighted-accuracy",
        "xla",
        "regularizer",
        "frozen-table",
    ],
)
def test_fused_fit_matches_keras_train_step(options, monkeypatch):
    calls = count_head_calls(monkeypatch)
    fused_history, fused_weights, fused_scores = train(True, **options)
    # Traced once or more each: fit's step (gradients) and evaluate's.
    assert set(calls) == {True, False}, "the fused steps did not both run"
    calls.clear()
    keras_history, keras_weights, keras_scores = train(False, **options)
    assert not calls
    float32 = options.get("dtype", "float32") == "float32"
    tolerance, weight_tolerance = (1e-5, 2e-6) if float32 else (2e-2, 5e-2)
    assert fused_history.keys() == keras_history.keys()
    for name in keras_history:
        np.testing.assert_allclose(
            fused_history[name], keras_history[name], rtol=tolerance
        )
    if "sparse_categorical_accuracy" in keras_history:
        assert (
            max(keras_history["sparse_categorical_accuracy"]) > 0
        )  # compared non-zero
    for a, b in zip(fused_weights, keras_weights, strict=True):
        np.testing.assert_allclose(a, b, atol=weight_tolerance)
    assert fused_scores.keys() == keras_scores.keys()
    for name, value in keras_scores.items():
        assert fused_scores[name] == pytest.approx(value, rel=tolerance)


@pytest.mark.parametrize(
    "options",
    [
        {"loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
        {"loss": kgs.CrossEntropy(reduction="sum")},
        {"weighted_metrics": [keras.metrics.SparseTopKCategoricalAccuracy(k=5)]},
        {"loss": type("Smoothed", (kgs.CrossEntropy,), {})()},
        {"dtype": "mixed_float16"},
        {"change": lambda lm: regularize(lm.backbone.token_embedding)},
    ],
    ids=[
        "keras-loss",
        "sum-reduction",
        "top-k-metric",
        "loss-subclass",
        "float16",
        "logit-regularizer",
    ],
)
def test_other_losses_and_metrics_use_keras_train_step(options, monkeypatch):
    calls = []
    monkeypatch.setattr(
        gpt_causal_lm, "head_cross_entropy", lambda *a, **k: calls.append(1)
    )
    history, _, _ = train(True, **options)
    assert not calls
    assert np.isfinite(history["loss"]).all()


def small_lm():
    lm = kgs.GPTCausalLM(small_backbone(), preprocessor=None)
    lm.compile(optimizer="sgd")
    return lm


def test_labels_outside_the_vocabulary_are_an_error():
    lm = small_lm()
    ids = np.ones((2, 8), "int32")
    labels = ids.copy()
    labels[1, 3] = -100
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the vocabulary"):
        lm.fit(x, labels, epochs=1, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the vocabulary"):
        lm.evaluate(x, labels, verbose=0)


def test_evaluate_before_fit_and_a_frozen_model():
    lm = small_lm()
    ids = RNG.integers(0, VOCAB, (2, 9)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((2, 8), "int32")}
    scores = lm.evaluate(x, ids[:, 1:], verbose=0, return_dict=True)
    logits = lm.predict(x, verbose=0)
    expected = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(ids[:, 1:], logits)
    )
    assert scores["loss"] == pytest.approx(float(expected), rel=1e-5)
    before = lm.get_weights()
    lm.trainable = False
    with pytest.warns(UserWarning, match="does not have any trainable weights"):
        history = lm.fit(x, ids[:, 1:], epochs=1, verbose=0)
    assert history.history["loss"][0] == pytest.approx(scores["loss"], rel=1e-5)
    for a, b in zip(before, lm.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


# === Interleaved halves ===


def fit_halves(
    halves, rows, batch_size, change=None, jit_compile=False, static_batch=False
):
    keras.utils.set_random_seed(1)
    lm = kgs.GPTCausalLM(small_backbone(), preprocessor=None)
    lm.interleaved_halves = halves
    if change:
        change(lm)
    lm.compile(
        optimizer=keras.optimizers.SGD(0.5),
        weighted_metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    initial = lm.get_weights()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, (rows, 13)).astype("int32")
    mask = np.ones((rows, 12), bool)
    mask[0, 7:] = False
    mask[-1, 3:] = False
    x = {"token_ids": ids[:, :-1], "padding_mask": mask}
    if static_batch:  # batches whose size the step's graph knows
        data = tf.data.Dataset.from_tensor_slices((x, ids[:, 1:], mask))
        data = data.batch(batch_size, drop_remainder=True)
        history = lm.fit(data, epochs=2, verbose=0)
    else:  # Keras' arrays adapter: a batch size unknown to the graph
        history = lm.fit(
            x,
            ids[:, 1:],
            sample_weight=mask,
            batch_size=batch_size,
            epochs=2,
            verbose=0,
            shuffle=False,
        )
    return history.history, initial, lm.get_weights()


@pytest.mark.parametrize(
    "rows, batch_size",
    [(8, 4), (6, 3), (7, 3)],
    ids=["even", "odd-batches", "one-row-last-batch"],
)
def test_interleaved_halves_train_like_one_chain(rows, batch_size, monkeypatch):
    calls = count_head_calls(monkeypatch)
    halves_history, _, halves_weights = fit_halves(True, rows, batch_size)
    split = calls.count(True)
    calls.clear()
    whole_history, initial, whole_weights = fit_halves(False, rows, batch_size)
    # Each traced train step ran the head once per half.
    assert split == 2 * calls.count(True) > 0
    assert halves_history.keys() == whole_history.keys()
    for name in whole_history:
        np.testing.assert_allclose(halves_history[name], whole_history[name], rtol=1e-5)
    assert max(whole_history["accuracy"]) > 0  # compared non-zero
    # Trained at all (the key bias alone gets no gradient: softmax ignores it).
    moved = [not np.allclose(a, b) for a, b in zip(initial, whole_weights, strict=True)]
    assert sum(moved) == len(moved) - 1
    for a, b in zip(halves_weights, whole_weights, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6)


def test_halves_share_one_budget_of_head_logits(monkeypatch):
    # 4-row batches of 12 tokens: each half's 24 rows take two chunks of 12.
    budget = 2 * 12 * VOCAB
    monkeypatch.setattr(gpt_causal_lm, "HEAD_CHUNK_LOGITS", budget)
    budgets = count_head_calls(monkeypatch, "chunk_logits")
    halves_history, _, halves_weights = fit_halves(True, 8, 4)
    assert set(budgets) == {budget // 2}
    budgets.clear()
    whole_history, _, whole_weights = fit_halves(False, 8, 4)
    assert set(budgets) == {budget}
    for name in whole_history:
        np.testing.assert_allclose(halves_history[name], whole_history[name], rtol=1e-5)
    for a, b in zip(halves_weights, whole_weights, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"change": lambda lm: regularize(lm.backbone.get_layer("transformer_layer_0"))},
        {"jit_compile": True},
        {"batch_size": 1, "static_batch": True},
    ],
    ids=["activity-regularizer", "xla", "one-row-batches"],
)
def test_interleaved_halves_are_skipped_where_they_would_differ(options, monkeypatch):
    calls = count_head_calls(monkeypatch)
    options = {"rows": 4, "batch_size": 2, **options}
    fit_halves(True, **options)
    on = calls.count(True)
    calls.clear()
    fit_halves(False, **options)
    assert on == calls.count(True) > 0
