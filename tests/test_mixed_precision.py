"""Mixed precision: training under mixed_bfloat16/mixed_float16 stays sound."""

import keras
import numpy as np
import pytest

import keras_gpt_scratch as kgs
from keras_gpt_scratch.models import gpt_presets

TINY = {
    "vocabulary_size": 50257,
    "num_layers": 2,
    "num_heads": 2,
    "hidden_dim": 32,
    "max_sequence_length": 64,
    "dropout": 0.0,
}
COMPUTE = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


@pytest.fixture(params=sorted(COMPUTE))
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")


def batch(seed=0, n=8, length=16):
    ids = np.random.default_rng(seed).integers(0, 50257, (n, length + 1))
    ids = ids.astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones_like(ids[:, :-1])}
    return x, ids[:, 1:]


def test_training_lowers_the_loss_and_keeps_float32_where_it_matters(policy):
    keras.utils.set_random_seed(0)
    lm = kgs.GPTCausalLM(kgs.GPTBackbone(**TINY), preprocessor=None)
    assert lm.dtype_policy.name == policy
    assert lm.backbone.compute_dtype == COMPUTE[policy]
    # Variables (and so the optimizer's updates) stay float32.
    assert {w.dtype for w in lm.weights} == {"float32"}

    lm.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    # compile() wraps the optimizer for float16 (its range needs loss
    # scaling), and only then.
    scaled = isinstance(lm.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")

    x, y = batch()
    logits = lm(x)
    assert logits.dtype == "float32"  # softmax and the loss in float32
    hidden = lm.backbone(x)
    assert hidden.dtype == COMPUTE[policy]

    losses = lm.fit(x, y, batch_size=8, epochs=8, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.5, losses
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in lm.weights)

    lm.generate_jit_compile = False  # a quick compile; XLA is not the point
    lm.compile(sampler="greedy")
    # Token-id prompts: 8 real tokens, room for 4 more.
    prompt = np.zeros((2, 12), "int32")
    prompt[:, :8] = x["token_ids"][:2, :8]
    mask = np.zeros((2, 12), "int32")
    mask[:, :8] = 1
    out = lm.generate({"token_ids": prompt, "padding_mask": mask}, stop_token_ids=None)
    ids = keras.ops.convert_to_numpy(out["token_ids"])
    assert ids.shape == (2, 12) and ((ids >= 0) & (ids < 50257)).all()
    np.testing.assert_array_equal(ids[:, :8], prompt[:, :8])
    assert keras.ops.convert_to_numpy(out["padding_mask"]).all()  # 4 new tokens
    assert np.isfinite(keras.ops.convert_to_numpy(lm(x))).all()


def test_layer_norm_computes_in_float32(policy):
    norm = kgs.LayerNorm()
    # A large offset: 16-bit mean and variance of such values are visibly off.
    x = (1000.0 + np.random.default_rng(1).normal(size=(2, 3, 64))).astype("float32")
    out = norm(keras.ops.cast(x, COMPUTE[policy]))
    assert norm.scale.dtype == "float32" and out.dtype == COMPUTE[policy]
    x16 = keras.ops.convert_to_numpy(
        keras.ops.cast(keras.ops.cast(x, COMPUTE[policy]), "float32")
    )
    mean = x16.mean(-1, keepdims=True)
    expected = (x16 - mean) / np.sqrt(x16.var(-1, keepdims=True) + 1e-5)
    expected = keras.ops.cast(expected, COMPUTE[policy])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")),
        keras.ops.convert_to_numpy(keras.ops.cast(expected, "float32")),
        atol=0.02,  # output rounding only; 16-bit statistics are off by > 0.07
    )


def test_classifier_logits_are_float32(policy):
    backbone = kgs.GPTBackbone(**TINY)
    classifier = kgs.GPTClassifier(backbone, num_classes=3)
    x, _ = batch(n=2)
    logits = classifier(x)
    assert logits.dtype == "float32" and logits.shape == (2, 3)
    assert {w.dtype for w in classifier.weights} == {"float32"}


def test_preset_saved_under_a_mixed_policy_loads(policy, tmp_path):
    # keras_hub's task loader fails on a saved mixed_* policy ("Invalid
    # dtype"); ours loads it in the current global policy, or in `dtype`.
    keras.utils.set_random_seed(0)
    lm = kgs.GPTCausalLM(
        kgs.GPTBackbone(**TINY),
        kgs.GPTCausalLMPreprocessor(kgs.GPTTokenizer(), sequence_length=16),
    )
    lm.save_to_preset(tmp_path / "preset")
    # The saved config does name the policy.
    assert gpt_presets._saved_policy(str(tmp_path / "preset")) == policy
    keras.mixed_precision.set_global_policy("float32")
    loaded = kgs.GPTCausalLM.from_preset(str(tmp_path / "preset"))
    assert loaded.backbone.compute_dtype == "float32"
    for got, want in zip(loaded.weights, lm.weights, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    again = kgs.GPTCausalLM.from_preset(str(tmp_path / "preset"), dtype=policy)
    assert again.backbone.compute_dtype == COMPUTE[policy]
    # The backbone alone too (keras_hub would keep the saved policy).
    backbone = kgs.GPTBackbone.from_preset(str(tmp_path / "preset"))
    assert backbone.compute_dtype == "float32"
