import keras
import numpy as np
import pytest

import keras_gpt_scratch as kgs

TINY = dict(
    vocabulary_size=97,
    num_layers=2,
    num_heads=2,
    hidden_dim=16,
    intermediate_dim=32,
    dropout=0.0,
    max_sequence_length=12,
)


def inputs(ids):
    ids = np.asarray(ids, "int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def test_output_is_final_hidden_states():
    backbone = kgs.GPTBackbone(**TINY)
    out = backbone(inputs([[1, 2, 3, 4]]))
    assert out.shape == (1, 4, 16)
    # The final LayerNorm (unit scale, zero shift at init) normalises rows.
    np.testing.assert_allclose(np.mean(out, -1), 0, atol=1e-4)
    # Std just under 1: eps=1e-5 is not negligible against small init activations.
    np.testing.assert_allclose(np.std(out, -1), 1, atol=0.05)


def test_causality():
    backbone = kgs.GPTBackbone(**TINY)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 97, (2, 10))
    base = np.asarray(backbone(inputs(ids)))
    for t in (0, 4, 8):
        changed = ids.copy()
        changed[:, t + 1 :] = rng.integers(0, 97, changed[:, t + 1 :].shape)
        out = np.asarray(backbone(inputs(changed)))
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5)
        assert not np.allclose(out[:, t + 1 :], base[:, t + 1 :], atol=1e-3)


def test_right_padding_does_not_change_real_positions():
    backbone = kgs.GPTBackbone(**TINY)
    ids = np.array([[5, 6, 7, 0, 0]], "int32")
    padded = backbone({"token_ids": ids, "padding_mask": np.array([[1, 1, 1, 0, 0]])})
    short = backbone(inputs(ids[:, :3]))
    np.testing.assert_allclose(np.asarray(padded)[:, :3], short, atol=1e-5)


def test_gpt2_small_parameter_count():
    backbone = kgs.GPTBackbone(
        vocabulary_size=50257,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        max_sequence_length=1024,
    )
    assert backbone.count_params() == 124_439_808


def test_book_config_parameter_count():
    cfg = {
        "vocab_size": 50257,
        "context_length": 1024,
        "emb_dim": 768,
        "n_heads": 12,
        "n_layers": 12,
        "drop_rate": 0.1,
        "qkv_bias": False,
    }
    backbone = kgs.GPTBackbone.from_book_config(cfg)
    assert backbone.count_params() == 163_009_536
    assert not backbone.tie_weights and not backbone.qkv_bias
    assert backbone.max_sequence_length == 1024 and backbone.dropout == 0.1


def test_book_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="emb_size"):
        kgs.GPTBackbone.from_book_config({"emb_size": 4})


def test_heads_must_divide_hidden_size():
    with pytest.raises(ValueError, match=r"hidden_dim \(30\).*num_heads \(4\)"):
        kgs.GPTBackbone(**{**TINY, "hidden_dim": 30, "num_heads": 4})


def test_rejects_sequence_longer_than_context():
    backbone = kgs.GPTBackbone(**TINY)
    with pytest.raises(ValueError, match="context length"):
        backbone(inputs(np.ones((1, 13))))


def test_rejects_out_of_range_token_id():
    backbone = kgs.GPTBackbone(**TINY)
    with pytest.raises(Exception, match="Token id 97 is outside the vocabulary"):
        backbone(inputs([[1, 97]]))


def test_config_round_trip():
    backbone = kgs.GPTBackbone(**{**TINY, "qkv_bias": False, "tie_weights": False})
    clone = kgs.GPTBackbone.from_config(backbone.get_config())
    assert clone.get_config() == backbone.get_config()
    clone.set_weights(backbone.get_weights())
    x = inputs([[3, 1, 4, 1, 5]])
    np.testing.assert_allclose(clone(x), backbone(x), atol=1e-6)


def test_frozen_weight_names():
    # Saved presets are keyed by these names: changing them breaks old files.
    backbone = kgs.GPTBackbone(**{**TINY, "num_layers": 1, "tie_weights": False})
    names = [w.path for w in backbone.weights]
    assert names == [
        "token_embedding/embeddings",
        "token_embedding/reverse_embeddings",
        "position_embedding/embeddings",
        "transformer_layer_0/attention_norm/scale",
        "transformer_layer_0/attention_norm/shift",
        "transformer_layer_0/attention/query/kernel",
        "transformer_layer_0/attention/query/bias",
        "transformer_layer_0/attention/key/kernel",
        "transformer_layer_0/attention/key/bias",
        "transformer_layer_0/attention/value/kernel",
        "transformer_layer_0/attention/value/bias",
        "transformer_layer_0/attention/output_dense/kernel",
        "transformer_layer_0/attention/output_dense/bias",
        "transformer_layer_0/feed_forward_norm/scale",
        "transformer_layer_0/feed_forward_norm/shift",
        "transformer_layer_0/feed_forward/intermediate_dense/kernel",
        "transformer_layer_0/feed_forward/intermediate_dense/bias",
        "transformer_layer_0/feed_forward/output_dense/kernel",
        "transformer_layer_0/feed_forward/output_dense/bias",
        "layer_norm/scale",
        "layer_norm/shift",
    ]


def test_presets_listed_and_param_counts_match_metadata():
    presets = kgs.GPTBackbone.presets
    assert {"gpt_tiny", "gpt2_124m", "gpt2_355m", "gpt2_774m", "gpt2_1558m"} <= set(
        presets
    )
    assert presets["gpt_tiny"]["backbone"]["max_sequence_length"] == 256
    with pytest.warns(UserWarning, match="freshly initialised"):
        tiny = kgs.GPTBackbone.from_preset("gpt_tiny")
    assert tiny.count_params() == presets["gpt_tiny"]["metadata"]["params"]
    assert presets["gpt2_124m"]["metadata"]["params"] == 124_439_808


def test_gpt2_preset_geometry():
    cfg = kgs.GPTBackbone.presets["gpt2_124m"]["backbone"]
    assert (cfg["vocabulary_size"], cfg["max_sequence_length"], cfg["hidden_dim"]) == (
        50257,
        1024,
        768,
    )
    assert (cfg["num_heads"], cfg["num_layers"]) == (12, 12)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="gpt_small.*gpt2_124m.*gpt_tiny"):
        kgs.GPTBackbone.from_preset("gpt_small")


def test_mixed_bfloat16_backbone():
    backbone = kgs.GPTBackbone(**TINY, dtype="mixed_bfloat16")
    out = backbone(inputs([[1, 2, 3]]))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert all(w.dtype == "float32" for w in backbone.weights)
    logits = backbone.token_embedding(out, reverse=True)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"


def test_book_config_uses_pytorch_default_initialisation():
    cfg = {
        "vocab_size": 500,
        "context_length": 16,
        "emb_dim": 64,
        "n_heads": 2,
        "n_layers": 1,
        "drop_rate": 0.0,
        "qkv_bias": False,
    }
    book = kgs.GPTBackbone.from_book_config(cfg)
    assert book.init == "torch" and book.get_config()["init"] == "torch"
    table = book.token_embedding.embeddings.numpy()
    assert 0.9 < table.std() < 1.1  # nn.Embedding: N(0, 1)
    kernel = book.transformer_layers[0].attention.query.kernel.numpy()
    bound = 1 / np.sqrt(64)  # nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
    head = book.token_embedding.reverse_embeddings.numpy()
    assert np.abs(head).max() <= bound
    gpt2 = kgs.GPTBackbone(**TINY)
    assert gpt2.init == "gpt2"
    assert 0.015 < gpt2.token_embedding.embeddings.numpy().std() < 0.025
    clone = kgs.GPTBackbone.from_config(book.get_config())
    assert clone.init == "torch"
    with pytest.raises(ValueError, match="init must be"):
        kgs.GPTBackbone(**TINY, init="xavier")


@pytest.mark.parametrize("init", ["gpt2", "torch"])
def test_no_two_weights_start_from_the_same_draw(init):
    # One Keras initializer instance gives the same values to every weight
    # of a shape; each weight must get its own draw (this slowed training).
    def build():
        keras.utils.set_random_seed(7)
        backbone = kgs.GPTBackbone(
            vocabulary_size=300,
            num_layers=2,
            num_heads=2,
            hidden_dim=16,
            max_sequence_length=300,
            tie_weights=False,
            init=init,
        )
        return {w.path: keras.ops.convert_to_numpy(w) for w in backbone.weights}

    weights = build()
    random = {
        path: value
        for path, value in weights.items()
        if not path.endswith(("scale", "shift", "bias"))
    }
    assert len(random) == 3 + 2 * 6  # embeddings, head, 6 kernels per block
    paths = sorted(random)
    for i, a in enumerate(paths):
        for b in paths[i + 1 :]:
            if random[a].shape == random[b].shape:
                assert not np.allclose(random[a], random[b]), (a, b)
    # Rows shared by the token and position tables differ too.
    assert not np.allclose(
        random["token_embedding/embeddings"], random["position_embedding/embeddings"]
    )
    # And the global seed still makes the draw reproducible.
    again = build()
    for path, value in weights.items():
        np.testing.assert_array_equal(value, again[path])
