"""kgs.CrossEntropy against Keras' sparse categorical cross-entropy."""

import keras
import numpy as np
import tensorflow as tf

import keras_gpt_scratch as kgs

RNG = np.random.default_rng(0)


def loss_and_grad(loss_fn, labels, logits, sample_weight=None):
    logits = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = loss_fn(labels, logits, sample_weight=sample_weight)
    return float(loss), tape.gradient(loss, logits).numpy()


def test_matches_keras_values_and_gradients_with_padding_weights():
    logits = (RNG.standard_normal((3, 7, 50)) * 4).astype("float32")
    labels = RNG.integers(0, 50, (3, 7))
    weights = np.ones((3, 7), "float32")
    weights[0, 5:] = 0  # padding
    ours = loss_and_grad(kgs.CrossEntropy(), labels, logits, weights)
    keras_ = loss_and_grad(
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        labels,
        logits,
        weights,
    )
    assert abs(ours[0] - keras_[0]) < 1e-5
    np.testing.assert_allclose(ours[1], keras_[1], atol=1e-7)
    assert not ours[1][0, 5:].any()  # no gradient through padding


def test_per_token_values_and_large_logits():
    # Log-sum-exp must not overflow where exp(logits) does.
    logits = np.array([[[1000.0, 0.0, -1000.0], [0.0, 1.0, 3.0]]], "float32")
    labels = np.array([[0, 2]])
    per_token = kgs.CrossEntropy(reduction=None)(labels, logits)
    expected = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    np.testing.assert_allclose(per_token, expected, atol=1e-6)
    assert np.isfinite(per_token).all()


def test_bfloat16_logits_are_computed_in_float32():
    logits = (RNG.standard_normal((2, 4, 30)) * 3).astype("float32")
    labels = RNG.integers(0, 30, (2, 4))
    got = kgs.CrossEntropy()(labels, tf.cast(logits, "bfloat16"))
    assert got.dtype == "float32"
    ref = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        labels, tf.cast(tf.cast(logits, "bfloat16"), "float32")
    )
    assert abs(float(got) - float(ref)) < 1e-5


def test_config_round_trip_and_compile_default():
    loss = kgs.CrossEntropy(name="xent")
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, kgs.CrossEntropy) and again.name == "xent"
    backbone = kgs.GPTBackbone(
        vocabulary_size=64,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        max_sequence_length=8,
    )
    lm = kgs.GPTCausalLM(backbone)
    lm.compile()
    assert isinstance(lm.loss, kgs.CrossEntropy)
