"""kgs.CrossEntropy against Keras' sparse categorical cross-entropy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gpt_scratch as kgs

RNG = np.random.default_rng(0)


def loss_and_grad(loss_fn, labels, logits, sample_weight=None, graph=False):
    logits = tf.Variable(logits)

    def run():
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, logits, sample_weight=sample_weight)
        return loss, tape.gradient(loss, logits)

    # In a graph (fit) the fused XLA pair runs; eagerly, plain ops.
    loss, grad = tf.function(run)() if graph else run()
    return float(loss), grad.numpy()


@pytest.mark.parametrize("graph", [True, False])
def test_matches_keras_values_and_gradients_with_padding_weights(graph):
    logits = (RNG.standard_normal((3, 7, 50)) * 4).astype("float32")
    labels = RNG.integers(0, 50, (3, 7))
    weights = np.ones((3, 7), "float32")
    weights[0, 5:] = 0  # padding
    ours = loss_and_grad(kgs.CrossEntropy(), labels, logits, weights, graph)
    keras_ = loss_and_grad(
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        labels,
        logits,
        weights,
    )
    assert abs(ours[0] - keras_[0]) < 1e-5
    np.testing.assert_allclose(ours[1], keras_[1], atol=1e-7)
    assert not ours[1][0, 5:].any()  # no gradient through padding


@pytest.mark.parametrize("graph", [True, False])
def test_per_token_values_and_large_logits(graph):
    # Log-sum-exp must not overflow where exp(logits) does.
    logits = np.array([[[1000.0, 0.0, -1000.0], [0.0, 1.0, 3.0]]], "float32")
    labels = np.array([[0, 2]])
    loss = kgs.CrossEntropy(reduction=None)
    per_token = tf.function(loss)(labels, logits) if graph else loss(labels, logits)
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


@pytest.mark.parametrize("graph", [True, False])
def test_labels_outside_the_vocabulary_are_named_not_clamped(graph):
    # XLA's gather would clamp -100 (a Hugging Face "ignore" label) silently.
    logits = RNG.standard_normal((1, 3, 10)).astype("float32")
    labels = np.array([[1, -100, 2]])
    loss = kgs.CrossEntropy()
    call = tf.function(loss) if graph else loss
    with pytest.raises(
        (ValueError, tf.errors.InvalidArgumentError), match="outside the vocabulary"
    ) as err:
        call(labels, logits)
    assert "-100" in str(err.value) and "sample_weight" in str(err.value)
