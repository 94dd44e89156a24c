import contextlib
import os

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

import keras_gpt_scratch as kgs

TINY = dict(
    vocabulary_size=61,
    num_layers=2,
    num_heads=2,
    hidden_dim=16,
    intermediate_dim=32,
    dropout=0.0,
    max_sequence_length=16,
)


def batch(ids):
    ids = np.asarray(ids, "int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


@pytest.fixture
def lm():
    keras.utils.set_random_seed(0)
    return kgs.GPTCausalLM(kgs.GPTBackbone(**TINY), preprocessor=None)


def test_logits_use_the_tied_embedding(lm):
    x = batch([[1, 2, 3]])
    logits = lm(x)
    assert logits.shape == (1, 3, 61)
    hidden = lm.backbone(x)
    table = lm.backbone.token_embedding.embeddings.numpy()
    np.testing.assert_allclose(logits, np.asarray(hidden) @ table.T, atol=1e-5)


def test_untied_head_is_separate():
    lm = kgs.GPTCausalLM(kgs.GPTBackbone(**TINY, tie_weights=False))
    x = batch([[1, 2, 3]])
    head = lm.backbone.token_embedding.reverse_embeddings.numpy()
    np.testing.assert_allclose(lm(x), np.asarray(lm.backbone(x)) @ head, atol=1e-5)


def test_book_config_builds_untied_model():
    cfg = {
        "vocab_size": 61,
        "context_length": 8,
        "emb_dim": 16,
        "n_heads": 2,
        "n_layers": 1,
        "drop_rate": 0.0,
        "qkv_bias": False,
    }
    lm = kgs.GPTCausalLM.from_book_config(cfg)
    assert not lm.backbone.tie_weights
    assert lm(batch([[1, 2]])).shape == (1, 2, 61)


def test_default_compile_is_adamw_without_decay_on_norms_biases_embeddings(lm):
    opt = lm.optimizer
    assert isinstance(opt, keras.optimizers.AdamW)
    assert opt.weight_decay == pytest.approx(0.1)
    decayed = {v.path for v in lm.trainable_variables if opt._use_weight_decay(v)}
    assert "gpt_backbone/transformer_layer_0/attention/query/kernel" in decayed or any(
        p.endswith("attention/query/kernel") for p in decayed
    )
    assert not any(
        p.endswith(("bias", "scale", "shift", "embeddings")) for p in decayed
    )


def test_fit_lowers_loss_on_a_repeated_sequence(lm):
    seq = np.tile(np.arange(1, 9), 3)[:17]
    x = batch(np.tile(seq[:16], (8, 1)))
    y = np.tile(seq[1:17], (8, 1)).astype("int32")
    lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = lm.evaluate(x, y, verbose=0)[0]
    lm.fit(x, y, epochs=30, verbose=0)
    after = lm.evaluate(x, y, verbose=0)[0]
    assert after < 0.2 * before


def test_generate_greedy_continues_pattern_and_matches_uncached(lm):
    seq = np.tile(np.arange(1, 9), 3)[:17]
    x = batch(np.tile(seq[:16], (8, 1)))
    y = np.tile(seq[1:17], (8, 1)).astype("int32")
    lm.compile(optimizer=keras.optimizers.Adam(1e-2), sampler="greedy")
    lm.fit(x, y, epochs=40, verbose=0)
    prompt = np.zeros((1, 16), "int32")
    prompt[0, :4] = [1, 2, 3, 4]
    mask = np.zeros((1, 16), bool)
    mask[0, :4] = True
    out = lm.generate({"token_ids": prompt, "padding_mask": mask}, stop_token_ids=None)
    ids = out["token_ids"][0]
    # Uncached greedy decoding, one full forward pass per token.
    ref = [1, 2, 3, 4]
    while len(ref) < 16:
        logits = lm(batch([ref]))
        ref.append(int(np.argmax(logits[0, -1])))
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_array_equal(ids[:12], [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4])


def test_save_to_preset_round_trip_without_preprocessor(lm, tmp_path):
    preset = tmp_path / "preset"
    lm.save_to_preset(preset)
    assert {"config.json", "task.json", "model.weights.h5", "metadata.json"} <= set(
        os.listdir(preset)
    )
    x = batch([[5, 4, 3, 2, 1]])
    again = kgs.GPTCausalLM.from_preset(str(preset))
    np.testing.assert_allclose(again(x), lm(x), atol=1e-6)
    # keras_hub's base classes find our subclasses through the registry.
    generic = keras_hub.models.CausalLM.from_preset(str(preset))
    assert type(generic) is kgs.GPTCausalLM
    np.testing.assert_allclose(generic(x), lm(x), atol=1e-6)
    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    assert type(backbone) is kgs.GPTBackbone


def test_keras_file_round_trip_keeps_compile_state(lm, tmp_path):
    x = batch(np.tile(np.arange(1, 9), (4, 1)))
    y = np.roll(x["token_ids"], -1, axis=1)
    lm.fit(x, y, epochs=2, verbose=0)
    path = tmp_path / "model.keras"
    lm.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is kgs.GPTCausalLM
    np.testing.assert_allclose(loaded(x), lm(x), atol=1e-6)
    assert isinstance(loaded.optimizer, keras.optimizers.AdamW)
    assert loaded.optimizer.get_config() == lm.optimizer.get_config()
    for v in lm.trainable_variables:
        assert loaded.optimizer._use_weight_decay(v) == lm.optimizer._use_weight_decay(
            v
        )
    assert not loaded.optimizer._use_weight_decay(lm.backbone.layer_norm.scale)
    assert type(loaded.sampler) is type(lm.sampler)
    assert int(loaded.optimizer.iterations) == int(lm.optimizer.iterations) == 2
    for a, b in zip(loaded.optimizer.variables, lm.optimizer.variables, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-7)
    # Training continues from the same state: one more step agrees.
    lm.fit(x, y, epochs=1, verbose=0)
    loaded.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_allclose(loaded(x), lm(x), atol=1e-5)


def test_failed_save_leaves_existing_preset_intact(lm, tmp_path, monkeypatch):
    preset = tmp_path / "preset"
    lm.save_to_preset(preset)
    before = {f: (preset / f).read_bytes() for f in os.listdir(preset)}
    lm.backbone.token_embedding.embeddings.assign(
        np.zeros_like(lm.backbone.token_embedding.embeddings)
    )

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(kgs.GPTBackbone, "save_weights", boom)
    with pytest.raises(OSError, match="disk full"):
        lm.save_to_preset(preset)
    after = {f: (preset / f).read_bytes() for f in os.listdir(preset)}
    assert after == before
    assert not [p for p in os.listdir(tmp_path) if p != "preset"]  # no temp left


def test_failed_keras_save_leaves_existing_file_intact(lm, tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    lm.save(path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(keras.src.saving.saving_lib, "save_model", boom)
    with pytest.raises(OSError, match="disk full"):
        lm.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.keras"]


def test_preset_with_missing_weights_names_the_file(lm, tmp_path):
    preset = tmp_path / "preset"
    lm.save_to_preset(preset)
    os.remove(preset / "model.weights.h5")
    with pytest.raises(FileNotFoundError, match="model.weights.h5"):
        kgs.GPTCausalLM.from_preset(str(preset))


def test_preset_with_corrupt_files_names_the_file(lm, tmp_path):
    preset = tmp_path / "preset"
    lm.save_to_preset(preset)
    weights = preset / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"model\.weights\.h5 is corrupt"):
        kgs.GPTCausalLM.from_preset(str(preset))
    (preset / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json is corrupt"):
        kgs.GPTCausalLM.from_preset(str(preset))


def test_not_a_preset_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        kgs.GPTCausalLM.from_preset(str(tmp_path))


def test_unknown_preset_name(lm):
    with pytest.raises(ValueError, match="Known presets: gpt2_124m"):
        kgs.GPTCausalLM.from_preset("gpt2_125m")


def test_predict_rejects_out_of_range_ids(lm):
    with pytest.raises(Exception, match="outside the vocabulary"):
        lm.predict(batch([[1, 61]]), verbose=0)


def test_preset_from_a_newer_format_is_refused(lm, tmp_path):
    import json

    preset = tmp_path / "preset"
    lm.save_to_preset(preset)
    meta = json.loads((preset / "metadata.json").read_text())
    assert meta["keras_gpt_scratch_format_version"] == 1
    meta["keras_gpt_scratch_format_version"] = 99
    (preset / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="newer"):
        kgs.GPTCausalLM.from_preset(str(preset))


def test_untied_head_survives_preset_and_keras_saving(tmp_path):
    lm = kgs.GPTCausalLM(kgs.GPTBackbone(**TINY, tie_weights=False), preprocessor=None)
    x = batch([[3, 1, 4, 1, 5]])
    lm.save_to_preset(tmp_path / "p")
    np.testing.assert_allclose(
        kgs.GPTCausalLM.from_preset(str(tmp_path / "p"))(x), lm(x), atol=1e-6
    )
    lm.save(tmp_path / "m.keras")
    np.testing.assert_allclose(
        keras.saving.load_model(tmp_path / "m.keras")(x), lm(x), atol=1e-6
    )


def _fit_recording_updates(optimizer, jit, tie=True, strategy=None):
    """Three fit steps; returns the start and end weights and where each
    `optimizer.apply` was traced (the name of its graph)."""
    keras.utils.set_random_seed(0)
    seq = np.tile(np.arange(1, 9), 3)[:17]
    x = batch(np.tile(seq[:16], (6, 1)))
    y = np.tile(seq[1:17], (6, 1)).astype("int32")
    with strategy.scope() if strategy else contextlib.nullcontext():
        lm = kgs.GPTCausalLM(
            kgs.GPTBackbone(**TINY, tie_weights=tie), preprocessor=None
        )
        lm.optimizer_jit_compile = jit
        lm.compile(optimizer=optimizer())
    graphs = []
    original = lm.optimizer.apply

    def apply(*args, **kwargs):
        graphs.append(tf.compat.v1.get_default_graph().name)
        return original(*args, **kwargs)

    lm.optimizer.apply = apply
    start = [w.numpy() for w in lm.trainable_weights]
    lm.fit(x, y, batch_size=2, epochs=1, verbose=0, shuffle=False)
    iterations = int(lm.optimizer.iterations.numpy())
    return start, [w.numpy() for w in lm.trainable_weights], graphs, iterations


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: "auto",  # TorchAdamW's fused kernel, with global clipping
        lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.1),
        lambda: keras.optimizers.AdamW(1e-2, gradient_accumulation_steps=2),
        lambda: keras.optimizers.AdamW(1e-2, use_ema=True, ema_overwrite_frequency=2),
        lambda: keras.optimizers.SGD(0.1, momentum=0.9, clipnorm=0.5),
        lambda: keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-2, 3)),
    ],
    ids=["default", "adamw", "accumulation", "ema", "sgd-clipnorm", "schedule"],
)
def test_optimizer_update_under_xla_matches_keras(optimizer):
    start, xla, xla_graphs, xla_iterations = _fit_recording_updates(optimizer, True)
    _, plain, plain_graphs, plain_iterations = _fit_recording_updates(optimizer, False)
    # Traced inside the XLA function only when it is on.
    assert xla_graphs and all("optimizer_update" in g for g in xla_graphs)
    assert plain_graphs and not any("optimizer_update" in g for g in plain_graphs)
    assert xla_iterations == plain_iterations > 0
    moved = max(float(np.abs(a - b).max()) for a, b in zip(plain, start, strict=True))
    assert moved > 1e-3
    for a, b in zip(xla, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sparse_gradients_and_strategies_keep_keras_update():
    adam = lambda: keras.optimizers.Adam(1e-2)  # noqa: E731
    # An untied embedding's gradient is an IndexedSlices.
    _, _, graphs, _ = _fit_recording_updates(adam, True, tie=False)
    assert graphs and not any("optimizer_update" in g for g in graphs)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    start, end, graphs, _ = _fit_recording_updates(adam, True, strategy=strategy)
    assert graphs and not any("optimizer_update" in g for g in graphs)
    assert (
        max(float(np.abs(a - b).max()) for a, b in zip(end, start, strict=True)) > 1e-3
    )
