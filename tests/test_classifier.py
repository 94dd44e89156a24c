"""GPTClassifier, its preprocessor, and the `--task classify` recipe."""

import copy
import csv
import dataclasses
import itertools
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gpt_scratch as kgs
from keras_gpt_scratch import classify
from keras_gpt_scratch.cli import main as cli_main

TINY = {
    "vocabulary_size": 50257,
    "num_layers": 2,
    "num_heads": 2,
    "hidden_dim": 32,
    "max_sequence_length": 64,
    "dropout": 0.0,
}
END = 50256

POSITIVE = ["good", "great", "excellent", "wonderful", "lovely"]
NEGATIVE = ["bad", "awful", "terrible", "horrible", "dreadful"]
NOUNS = ["movie", "film", "meal", "book", "show", "day", "song", "trip"]
TEMPLATES = [
    "the {noun} was {adj}",
    "what a {adj} {noun}",
    "{adj} {noun}, really",
    "I thought the {noun} was {adj} overall",
]


def sentiment_data():
    """(texts, labels) for every template x noun x word; 1 = positive."""
    rows = []
    for template, noun in itertools.product(TEMPLATES, NOUNS):
        for label, words in ((1, POSITIVE), (0, NEGATIVE)):
            for adj in words:
                rows.append((template.format(noun=noun, adj=adj), label))
    order = np.random.default_rng(0).permutation(len(rows))
    texts = [rows[i][0] for i in order]
    labels = np.array([rows[i][1] for i in order], "int32")
    return texts, labels


def tiny_classifier(seed=0, sequence_length=16, **kwargs):
    keras.utils.set_random_seed(seed)
    return kgs.GPTClassifier(
        kgs.GPTBackbone(**TINY),
        num_classes=2,
        preprocessor=kgs.GPTClassifierPreprocessor(sequence_length=sequence_length),
        **kwargs,
    )


@pytest.fixture(scope="module")
def trained(data_dir):
    texts, labels = sentiment_data()
    cut = int(0.8 * len(texts))
    classifier = tiny_classifier()
    classifier.compile(optimizer=keras.optimizers.Adam(2e-3))
    classifier.fit(texts[:cut], labels[:cut], batch_size=32, epochs=12, verbose=0)
    return classifier, texts[cut:], labels[cut:]


# === Preprocessor ===


def test_preprocessor_pads_truncates_and_masks_by_length(data_dir):
    pre = kgs.GPTClassifierPreprocessor(sequence_length=6, add_end_token=True)
    x = pre(["Hello, world", "a b c d e f g h"])
    ids = keras.ops.convert_to_numpy(x["token_ids"])
    mask = keras.ops.convert_to_numpy(x["padding_mask"])
    assert ids[0].tolist() == [15496, 11, 995, END, END, END]
    # The end token is real, the padding (the same id) is not.
    assert mask[0].tolist() == [True, True, True, True, False, False]
    assert ids[1, -1] == END and mask[1].all()  # truncated, end token kept
    # The same through tf.data, labels passed through.
    ds = tf.data.Dataset.from_tensor_slices((["Hello, world"], [1])).batch(1).map(pre)
    (tx, ty) = next(iter(ds))
    assert tx["token_ids"].numpy().tolist() == [ids[0].tolist()]
    assert tx["padding_mask"].numpy().tolist() == [mask[0].tolist()]
    assert ty.numpy().tolist() == [1]


def test_preprocessor_config_round_trip_and_one_segment_only(data_dir):
    pre = kgs.GPTClassifierPreprocessor(sequence_length=12, add_start_token=True)
    clone = kgs.GPTClassifierPreprocessor.from_config(pre.get_config())
    assert clone.sequence_length == 12 and clone.add_start_token
    assert not clone.add_end_token and "truncate" not in pre.get_config()
    # keras_hub's multi-segment input, a tuple of texts per example.
    pairs = tf.data.Dataset.from_tensor_slices(((["first"], ["second"]), [1]))
    with pytest.raises(ValueError, match="one text per example"):
        pairs.batch(1).map(pre)
    with pytest.raises(ValueError, match="sequence_length"):
        kgs.GPTClassifierPreprocessor(sequence_length=0)


# === Model ===


def test_head_reads_the_last_real_token_not_the_padding():
    classifier = tiny_classifier()
    ids = np.array([[15496, 11, 995]], "int32")
    alone = classifier.predict(
        {"token_ids": ids, "padding_mask": np.ones_like(ids)}, verbose=0
    )
    padded = np.concatenate([ids, np.full((1, 5), END, "int32")], axis=1)
    mask = np.array([[1, 1, 1, 0, 0, 0, 0, 0]], "int32")
    batch = {
        "token_ids": np.concatenate([padded, [[11, 995, 15496, 11, 995, 11, 995, 1]]]),
        "padding_mask": np.concatenate([mask, np.ones_like(mask)]),
    }
    out = classifier.predict(batch, verbose=0)
    assert out.shape == (2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], alone[0], atol=1e-5)
    # Position -1 (a padding token) would give another answer.
    last = classifier.predict(
        {"token_ids": padded, "padding_mask": np.ones_like(padded)}, verbose=0
    )
    assert not np.allclose(last[0], alone[0], atol=1e-4)


def test_sequence_length_is_capped_at_the_context(data_dir):
    classifier = kgs.GPTClassifier(
        kgs.GPTBackbone(**TINY),
        num_classes=3,
        preprocessor=kgs.GPTClassifierPreprocessor(sequence_length=1024),
    )
    assert classifier.preprocessor.sequence_length == TINY["max_sequence_length"]
    assert classifier.predict(["word " * 200], verbose=0).shape == (1, 3)


def test_train_last_block_only_trains_the_last_block_norm_and_head():
    classifier = tiny_classifier(train_last_block_only=True)
    backbone = classifier.backbone
    expected = (
        backbone.transformer_layers[-1].weights
        + backbone.layer_norm.weights
        + classifier.output_dense.weights
    )
    assert {id(w) for w in classifier.trainable_weights} == {id(w) for w in expected}
    assert not backbone.token_embedding.trainable
    assert not backbone.transformer_layers[0].trainable
    # Kept through the config (and so through saving).
    clone = kgs.GPTClassifier.from_config(classifier.get_config())
    assert len(clone.trainable_weights) == len(expected)


def test_learns_a_two_class_sentiment_task(trained):
    classifier, texts, labels = trained
    predicted = classifier.predict(texts, verbose=0).argmax(-1)
    accuracy = float((predicted == labels).mean())
    assert accuracy >= 0.9, accuracy


def test_config_preset_and_keras_round_trips(trained, tmp_path):
    classifier, texts, _ = trained
    expected = classifier.predict(texts[:8], verbose=0)

    config = classifier.get_config()
    assert config["num_classes"] == 2 and config["train_last_block_only"] is False
    # from_config deserializes the backbone in place: give it a copy.
    clone = kgs.GPTClassifier.from_config(copy.deepcopy(config))
    assert clone.get_config() == config

    classifier.save_to_preset(tmp_path / "preset")
    loaded = kgs.GPTClassifier.from_preset(str(tmp_path / "preset"))
    assert isinstance(loaded, kgs.GPTClassifier) and loaded.num_classes == 2
    np.testing.assert_allclose(
        loaded.predict(texts[:8], verbose=0), expected, atol=1e-5
    )

    classifier.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(restored, kgs.GPTClassifier)
    # Compiled as saved (a custom compile() needs compile_from_config).
    assert isinstance(restored.optimizer, keras.optimizers.Adam)
    assert float(restored.optimizer.learning_rate) == pytest.approx(2e-3)
    np.testing.assert_allclose(
        restored.predict(texts[:8], verbose=0), expected, atol=1e-5
    )


def test_from_preset_of_a_language_model(data_dir, tmp_path):
    keras.utils.set_random_seed(5)
    lm = kgs.GPTCausalLM(
        kgs.GPTBackbone(**TINY), kgs.GPTCausalLMPreprocessor(sequence_length=64)
    )
    lm.save_to_preset(tmp_path / "lm")
    with pytest.raises(ValueError, match="num_classes"):
        kgs.GPTClassifier.from_preset(str(tmp_path / "lm"))
    classifier = kgs.GPTClassifier.from_preset(
        str(tmp_path / "lm"), num_classes=4, train_last_block_only=True
    )
    assert isinstance(classifier.preprocessor, kgs.GPTClassifierPreprocessor)
    assert classifier.preprocessor.sequence_length == 64
    for ours, theirs in zip(
        classifier.backbone.weights, lm.backbone.weights, strict=True
    ):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs)
        )
    assert classifier.predict(["a short text"], verbose=0).shape == (1, 4)


def test_from_builtin_preset_without_weights():
    with pytest.warns(UserWarning, match="freshly initialised"):
        classifier = kgs.GPTClassifier.from_preset("gpt_tiny", num_classes=2)
    assert classifier.backbone.num_layers == 4
    assert classifier.preprocessor.sequence_length == 256
    with pytest.raises(ValueError, match="num_classes"):
        kgs.GPTClassifier.from_preset("gpt_tiny")


# === CSV loading and the recipe ===


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_errors_are_clear(tmp_path):
    path = write_csv(tmp_path / "a.csv", [("hi", "0")], header=("message", "spam"))
    with pytest.raises(
        ValueError, match=r"no column 'text' or 'label'.*'message', 'spam'"
    ):
        classify.load_csv(path)
    path = write_csv(tmp_path / "b.csv", [("hi", "0"), ("yo", "spam")])
    with pytest.raises(ValueError, match=r"line 3: label 'spam'.*not an integer"):
        classify.load_csv(path)
    path = write_csv(tmp_path / "c.csv", [("hi", "0"), ("yo", "2")])
    with pytest.raises(ValueError, match=r"line 3: label 2 is outside \[0, 2\)"):
        classify.load_csv(path, num_classes=2)
    path = write_csv(tmp_path / "d.csv", [("hi", "-1"), ("yo", "1")])
    with pytest.raises(ValueError, match=r"line 2: label -1 is outside"):
        classify.load_csv(path)
    path = write_csv(tmp_path / "e.csv", [])
    with pytest.raises(ValueError, match="no rows"):
        classify.load_csv(path)
    texts, labels, n = classify.load_csv(
        write_csv(tmp_path / "f.csv", [("a", "0"), ("b", "2")])
    )
    assert texts == ["a", "b"] and labels.tolist() == [0, 2] and n == 3


def test_cli_classify_end_to_end_with_lora(data_dir, tmp_path, capsys):
    texts, labels = sentiment_data()
    path = write_csv(
        tmp_path / "data.csv",
        [(t, str(label)) for t, label in zip(texts[:64], labels[:64], strict=True)],
        header=("review", "sentiment"),
    )
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "run"
    args = [
        "train", "--task", "classify", "--csv", str(path),
        "--text-column", "review", "--label-column", "sentiment",
        "--config", str(config), "--epochs", "1", "--batch-size", "16",
        "--lora-rank", "2", "--output-dir", str(out),
    ]  # fmt: skip
    assert cli_main(args) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    # Adapters on query/value of both blocks, plus the head.
    c = TINY["hidden_dim"]
    assert summary["trainable_params"] == 2 * 2 * (2 * c * 2) + c * 2 + 2
    assert summary["num_classes"] == 2 and summary["val_accuracy"] is not None
    assert (out / "adapter.lora.h5").is_file() and (out / "classifier.keras").is_file()
    loaded = kgs.GPTClassifier.from_preset(str(out / "classifier"))
    assert loaded.predict(["a lovely day"], verbose=0).shape == (1, 2)

    # Bad input: a missing column is named, with the columns present.
    code = cli_main(args[:5] + ["--output-dir", str(tmp_path / "r2")])
    assert code == 2
    assert "no column 'text' or 'label'" in capsys.readouterr().err
    assert cli_main(["train", "--task", "classify"]) == 2
    assert "needs --csv" in capsys.readouterr().err


def test_classify_recipe_under_mixed_bfloat16(data_dir, tmp_path):
    # Fine-tuned from a language model's preset saved in float32: the run's
    # policy wins over the saved one.
    keras.utils.set_random_seed(0)
    kgs.GPTCausalLM(
        kgs.GPTBackbone(**TINY),
        kgs.GPTCausalLMPreprocessor(kgs.GPTTokenizer(), sequence_length=16),
    ).save_to_preset(tmp_path / "lm")
    texts, labels = sentiment_data()
    path = write_csv(
        tmp_path / "data.csv",
        [(t, str(label)) for t, label in zip(texts[:64], labels[:64], strict=True)],
    )
    config = classify.ClassifyConfig(
        csv=str(path),
        init_from=str(tmp_path / "lm"),
        epochs=1,
        batch_size=16,
        output_dir=str(tmp_path / "run"),
        dtype_policy="mixed_bfloat16",
        verbose=0,
    )
    result = classify.train_classifier(config, print_fn=lambda *_: None)
    assert keras.config.dtype_policy().name == "float32"  # put back
    assert result.model.backbone.compute_dtype == "bfloat16"
    assert result.model.compute_dtype == "bfloat16"
    assert {w.dtype for w in result.model.weights} == {"float32"}
    assert np.isfinite(result.train_loss) and result.val_loss is not None
    loaded = kgs.GPTClassifier.from_preset(str(tmp_path / "run/classifier"))
    assert loaded.backbone.compute_dtype == "float32"
    assert loaded.predict(["a lovely day"], verbose=0).dtype == np.float32
    with pytest.raises(ValueError, match="Known policies"):
        classify.train_classifier(
            dataclasses.replace(config, dtype_policy="float16"), print_fn=print
        )


def test_cli_classify_dtype_policy_flag_reaches_the_run(monkeypatch):
    seen = []
    monkeypatch.setattr(classify, "train_classifier", seen.append)
    args = ["train", "--task", "classify", "--csv", "reviews.csv"]
    assert cli_main([*args, "--dtype-policy", "mixed_float16"]) == 0
    assert cli_main(args) == 0
    assert [c.dtype_policy for c in seen] == ["mixed_float16", None]
