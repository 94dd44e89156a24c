"""LoRA fine-tuning: keras_hub's `enable_lora` on our backbone, and its checks."""

import json
import os

import keras
import numpy as np
import pytest
from keras_hub.models import Backbone

import keras_gpt_scratch as kgs
from keras_gpt_scratch import lora
from keras_gpt_scratch.cli import main as cli_main

TINY = {
    "vocabulary_size": 50257,
    "num_layers": 2,
    "num_heads": 2,
    "hidden_dim": 32,
    "max_sequence_length": 64,
    "dropout": 0.0,
}
RNG = np.random.default_rng(0)
IDS = RNG.integers(0, 50257, (8, 17)).astype("int32")
X = {"token_ids": IDS[:, :-1], "padding_mask": np.ones_like(IDS[:, :-1])}
Y = IDS[:, 1:]


def tiny_lm(seed=0):
    keras.utils.set_random_seed(seed)
    return kgs.GPTCausalLM(kgs.GPTBackbone(**TINY), preprocessor=None)


def weights_by_path(model):
    return {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}


def fit_a_few_steps(lm, steps=5):
    lm.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    history = lm.fit(X, Y, batch_size=8, epochs=steps, verbose=0)
    return history.history["loss"]


def test_default_targets_are_query_and_value_and_only_adapters_train():
    lm = tiny_lm()
    lm.backbone.enable_lora(4)
    trainable = [w.path for w in lm.trainable_weights]
    assert len(trainable) == TINY["num_layers"] * 2 * 2
    for path in trainable:
        assert path.rsplit("/", 1)[-1] in ("lora_kernel_a", "lora_kernel_b")
        assert "/query/" in path or "/value/" in path
    c, r = TINY["hidden_dim"], 4
    count = sum(int(np.prod(w.shape)) for w in lm.trainable_weights)
    assert count == TINY["num_layers"] * 2 * (c * r + r * c)
    # The biases of the adapted projections are frozen too (keras_hub leaves
    # them trainable).
    query = lm.backbone.transformer_layers[0].attention.query
    assert query.lora_enabled and not query.bias.trainable
    assert not query._kernel.trainable


def test_adapted_model_matches_base_before_training_and_only_adapters_change():
    lm = tiny_lm()
    before = keras.ops.convert_to_numpy(lm(X))
    base = weights_by_path(lm)
    lm.backbone.enable_lora(4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(lm(X)), before, atol=1e-6)

    losses = fit_a_few_steps(lm)
    assert losses[-1] < losses[0]
    after = weights_by_path(lm)
    changed = {p for p in base if not np.array_equal(base[p], after[p])}
    assert changed == set(), f"frozen weights changed: {sorted(changed)}"
    adapters = [p for p in after if p not in base]
    assert len(adapters) == TINY["num_layers"] * 2 * 2
    for path in adapters:
        if path.endswith("lora_kernel_b"):  # starts at zero
            assert np.abs(after[path]).max() > 0
    assert not np.allclose(keras.ops.convert_to_numpy(lm(X)), before, atol=1e-4)


def test_saved_adapters_reload_onto_a_fresh_base_model(tmp_path):
    lm = tiny_lm(seed=1)
    lm.backbone.enable_lora(4)
    fit_a_few_steps(lm, steps=3)
    expected = keras.ops.convert_to_numpy(lm(X))
    path = tmp_path / "adapter.lora.h5"
    assert lora.save_adapters(lm.backbone, path)
    full = tmp_path / "full.weights.h5"
    lm.save_weights(full)
    # Adapters only: a small fraction of the model.
    assert os.path.getsize(path) < os.path.getsize(full) / 20

    fresh = tiny_lm(seed=1)  # the same base weights
    fresh.backbone.load_lora_weights(str(path))  # enables rank-4 LoRA itself
    assert fresh.backbone._lora_rank == 4
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fresh(X)), expected, atol=1e-5
    )


def test_feed_forward_targets_save_and_reload(tmp_path):
    targets = ["intermediate_dense", "output_dense"]
    lm = tiny_lm(seed=2)
    lm.backbone.enable_lora(2, target_layer_names=targets)
    names = {w.path.split("/")[-2] for w in lm.trainable_weights}
    assert names == set(targets)
    # "output_dense" is both the attention output and the second FF layer.
    assert len(lm.trainable_weights) == TINY["num_layers"] * 3 * 2
    fit_a_few_steps(lm, steps=2)
    path = tmp_path / "ff.lora.h5"
    lm.backbone.save_lora_weights(str(path))

    fresh = tiny_lm(seed=2)
    # Non-default targets: enable them first, then load.
    fresh.backbone.enable_lora(2, target_layer_names=targets)
    fresh.backbone.load_lora_weights(str(path))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fresh(X)),
        keras.ops.convert_to_numpy(lm(X)),
        atol=1e-5,
    )


@pytest.mark.parametrize("rank", [0, -2, 2.5, True, "8"])
def test_bad_rank_is_a_clear_error(rank):
    backbone = kgs.GPTBackbone(**TINY)
    with pytest.raises(ValueError, match="LoRA rank must be an int >= 1"):
        backbone.enable_lora(rank)
    assert not backbone.transformer_layers[0].attention.query.lora_enabled


def test_unknown_targets_name_the_layers_available():
    backbone = kgs.GPTBackbone(**TINY)
    with pytest.raises(
        ValueError, match=r"target layers \['q_proj'\] are not in"
    ) as err:
        backbone.enable_lora(4, target_layer_names=["query", "q_proj"])
    message = str(err.value)
    for name in ("query", "key", "value", "output_dense", "intermediate_dense"):
        assert name in message
    # Nothing was half-enabled.
    assert not any(w.path.endswith("lora_kernel_a") for w in backbone.weights)


def test_a_model_without_the_default_targets_is_a_clear_error():
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(4, name="proj_out")(
        keras.layers.Dense(8, name="proj_in")(inputs)
    )
    backbone = Backbone(inputs=inputs, outputs=outputs)
    with pytest.raises(ValueError) as err:
        lora.check_lora_targets(backbone, 4, None)
    message = str(err.value)
    assert "'query'" in message and "'value'" in message
    assert "proj_in, proj_out" in message


def test_enabling_twice_is_a_clear_error():
    backbone = kgs.GPTBackbone(**TINY)
    backbone.enable_lora(2)
    with pytest.raises(ValueError, match="already enabled.*rank 2"):
        backbone.enable_lora(4)


def test_adapter_checkpoint_restores_adapters_after_a_merged_backup(tmp_path):
    # RunBackup saves merged kernels and zeroes the adapters on load;
    # AdapterCheckpoint puts the base kernels and the adapters back.
    lm = tiny_lm(seed=3)
    lm.backbone.enable_lora(2)
    fit_a_few_steps(lm, steps=2)
    adapters = tmp_path / "adapter.lora.h5"
    lora.AdapterCheckpoint(lm.backbone, adapters).on_epoch_end(0)
    backup = tmp_path / "backup.weights.h5"
    lm.save_weights(backup)
    expected = keras.ops.convert_to_numpy(lm(X))

    resumed = tiny_lm(seed=3)
    resumed.backbone.enable_lora(2)
    base_kernel = keras.ops.convert_to_numpy(
        resumed.backbone.transformer_layers[0].attention.query._kernel
    )
    callback = lora.AdapterCheckpoint(resumed.backbone, adapters)
    resumed.load_weights(backup)  # what RunBackup does
    callback.on_train_begin()
    query = resumed.backbone.transformer_layers[0].attention.query
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(query._kernel), base_kernel
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(query.lora_kernel_b),
        keras.ops.convert_to_numpy(
            lm.backbone.transformer_layers[0].attention.query.lora_kernel_b
        ),
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(resumed(X)), expected, atol=1e-5
    )


def test_cli_lora_fine_tune_from_a_preset(data_dir, tmp_path, capsys):
    keras.utils.set_random_seed(4)
    base = kgs.GPTCausalLM(
        kgs.GPTBackbone(**{**TINY, "num_layers": 1}),
        kgs.GPTCausalLMPreprocessor(sequence_length=64),
    )
    base.save_to_preset(tmp_path / "base")
    out = tmp_path / "run"
    code = cli_main(
        [
            "train",
            "--from",
            str(tmp_path / "base"),
            "--lora-rank",
            "2",
            "--corpus",
            "verdict",
            "--context-length",
            "32",
            "--batch-size",
            "4",
            "--steps",
            "2",
            "--sample-tokens",
            "0",
            "--output-dir",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["lora_rank"] == 2
    adapter = out / lora.ADAPTER_FILENAME
    assert adapter.is_file() and adapter.stat().st_size < 50_000
    # The adapters on the original base reproduce the saved (merged) model.
    merged = kgs.GPTCausalLM.from_preset(str(out / "last"))
    restored = kgs.GPTCausalLM.from_preset(str(tmp_path / "base"))
    restored.backbone.load_lora_weights(str(adapter))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(X)),
        keras.ops.convert_to_numpy(merged(X)),
        atol=1e-4,
    )
    # Only the adapters moved: the merged model differs from the base.
    assert not np.allclose(
        keras.ops.convert_to_numpy(merged(X)),
        keras.ops.convert_to_numpy(base(X)),
        atol=1e-6,
    )
