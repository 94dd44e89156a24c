import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gpt_scratch import paths
from keras_gpt_scratch.models.gpt_backbone import GPTBackbone
from keras_gpt_scratch.models.gpt_causal_lm_preprocessor import (
    GPTCausalLMPreprocessor,
)
from keras_gpt_scratch.tokenizers import gpt_tokenizer as gpt_tokenizer_lib
from keras_gpt_scratch.tokenizers.gpt_tokenizer import GPTTokenizer

EOT = 50256
HELLO = [15496, 11, 995]  # "Hello, world"
FOX = [464, 21831, 21256]  # "The fox slept"


@pytest.fixture(scope="module")
def preprocessor(gpt_tokenizer):
    return GPTCausalLMPreprocessor(gpt_tokenizer, sequence_length=8)


def as_numpy(outputs):
    def to_numpy(value):
        # A writable copy (tests edit the arrays).
        return np.array(value.numpy() if hasattr(value, "numpy") else value)

    return keras.tree.map_structure(to_numpy, outputs)


def test_string_gets_start_and_end_tokens(preprocessor):
    x, y, sample_weight = as_numpy(preprocessor("Hello, world"))
    assert x["token_ids"].tolist() == [EOT, *HELLO, EOT, EOT, EOT, EOT]
    assert x["padding_mask"].tolist() == [True] * 5 + [False] * 3
    assert y.tolist() == [*HELLO, EOT, EOT, EOT, EOT, EOT]
    # The last real target is the end token; padding is not trained on.
    assert sample_weight.tolist() == [True] * 4 + [False] * 4
    assert x["token_ids"].dtype == np.int32


def test_batch_of_strings(preprocessor):
    x, y, sample_weight = as_numpy(preprocessor(["Hello, world", "The fox slept"]))
    assert x["token_ids"].shape == (2, 8)
    assert x["token_ids"][1].tolist() == [EOT, *FOX, EOT, EOT, EOT, EOT]
    assert y[1].tolist() == [*FOX, EOT, EOT, EOT, EOT, EOT]
    assert sample_weight.sum(axis=1).tolist() == [4, 4]


def test_raw_windows_without_start_and_end_tokens(gpt_tokenizer):
    preprocessor = GPTCausalLMPreprocessor(
        gpt_tokenizer, sequence_length=2, add_start_token=False, add_end_token=False
    )
    x, y, sample_weight = as_numpy(preprocessor(["Hello, world", "The fox slept"]))
    assert x["token_ids"].tolist() == [HELLO[:2], FOX[:2]]
    assert y.tolist() == [HELLO[1:], FOX[1:]]
    assert x["padding_mask"].all() and sample_weight.all()


def test_truncation_and_sequence_length_override(preprocessor):
    x, y, _ = as_numpy(preprocessor("Hello, world", sequence_length=3))
    # 4 tokens before the shift: like keras_hub, the text is cut to keep
    # both the start and the end token.
    assert x["token_ids"].tolist() == [EOT, *HELLO[:2]]
    assert y.tolist() == [*HELLO[:2], EOT]
    assert preprocessor.sequence_length == 8


def test_in_tf_data_like_fit(preprocessor):
    texts = ["Hello, world", "The fox slept", "Hello, world, hello, world, hello"]
    eager = as_numpy(preprocessor(texts))
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(3)
    dataset = dataset.map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
    x_spec, y_spec, w_spec = dataset.element_spec
    assert x_spec["token_ids"].shape.as_list() == [None, 8]
    assert x_spec["token_ids"].dtype == tf.int32
    assert y_spec.dtype == tf.int32 and w_spec.dtype == tf.bool
    x, y, sample_weight = as_numpy(next(iter(dataset)))
    np.testing.assert_array_equal(x["token_ids"], eager[0]["token_ids"])
    np.testing.assert_array_equal(x["padding_mask"], eager[0]["padding_mask"])
    np.testing.assert_array_equal(y, eager[1])
    np.testing.assert_array_equal(sample_weight, eager[2])
    # The long text is cut to fit, and still ends with the end token.
    assert x["token_ids"][2].tolist()[:4] == [EOT, *HELLO]
    assert EOT not in x["token_ids"][2].tolist()[1:]
    assert y[2].tolist()[-1] == EOT and sample_weight[2].all()
    # Unbatched elements (a scalar string each) work too.
    single = tf.data.Dataset.from_tensor_slices(texts[:1]).map(preprocessor)
    x, _, _ = as_numpy(next(iter(single)))
    assert x["token_ids"].tolist() == eager[0]["token_ids"][0].tolist()


def test_generate_preprocess_and_postprocess(preprocessor):
    x = as_numpy(preprocessor.generate_preprocess(["Hello,", "The fox slept"]))
    # A start token but no end token: generation continues the prompt.
    assert x["token_ids"].tolist() == [
        [EOT, 15496, 11, EOT, EOT, EOT, EOT, EOT],
        [EOT, *FOX, EOT, EOT, EOT, EOT],
    ]
    assert x["padding_mask"].sum(axis=1).tolist() == [3, 4]
    # As if the model had generated " world" and then the end token.
    x["token_ids"][0, 3:5] = [995, EOT]
    x["padding_mask"][0, 3:5] = True
    texts = preprocessor.generate_postprocess(x)
    assert texts == ["Hello, world", "The fox slept"]
    single = preprocessor.generate_preprocess("Hello,")
    assert preprocessor.generate_postprocess(single) == "Hello,"


def test_generate_in_a_tf_function(preprocessor):
    @tf.function
    def round_trip(texts):
        return preprocessor.generate_postprocess(
            preprocessor.generate_preprocess(texts)
        )

    output = round_trip(tf.constant(["Hello, world", "The fox slept"]))
    assert [text.decode() for text in output.numpy()] == [
        "Hello, world",
        "The fox slept",
    ]


def test_config_round_trip(preprocessor):
    config = preprocessor.get_config()
    assert config["sequence_length"] == 8
    assert config["add_start_token"] and config["add_end_token"]
    serialized = keras.saving.serialize_keras_object(preprocessor)
    assert serialized["registered_name"] == "keras_gpt_scratch>GPTCausalLMPreprocessor"
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert isinstance(restored, GPTCausalLMPreprocessor)
    assert isinstance(restored.tokenizer, GPTTokenizer)
    assert restored.get_config() == config
    x, _, _ = as_numpy(restored("Hello, world"))
    assert x["token_ids"].tolist() == [EOT, *HELLO, EOT, EOT, EOT, EOT]


def test_defaults_and_validation():
    preprocessor = GPTCausalLMPreprocessor()
    assert isinstance(preprocessor.tokenizer, GPTTokenizer)
    assert preprocessor.sequence_length == 1024
    assert preprocessor.backbone_cls is GPTBackbone
    assert preprocessor.tokenizer_cls is GPTTokenizer
    with pytest.raises(ValueError, match="sequence_length"):
        GPTCausalLMPreprocessor(sequence_length=0)


def test_from_builtin_preset():
    preprocessor = GPTCausalLMPreprocessor.from_preset("gpt_tiny")
    assert preprocessor.sequence_length == 256
    assert isinstance(preprocessor.tokenizer, GPTTokenizer)
    shorter = GPTCausalLMPreprocessor.from_preset("gpt_tiny", sequence_length=4)
    assert shorter.sequence_length == 4
    with pytest.raises(ValueError, match="Unknown preset"):
        GPTCausalLMPreprocessor.from_preset("no_such_preset")


def test_preset_directory_round_trip_needs_no_other_ranks(
    gpt_tokenizer, tmp_path, monkeypatch
):
    preset = tmp_path / "preset"
    backbone = GPTBackbone(
        vocabulary_size=50257,
        num_layers=1,
        num_heads=1,
        hidden_dim=4,
        intermediate_dim=8,
        max_sequence_length=16,
    )
    backbone.save_to_preset(str(preset))
    GPTCausalLMPreprocessor(gpt_tokenizer, sequence_length=8).save_to_preset(
        str(preset)
    )
    assert (preset / "assets/tokenizer/gpt2.tiktoken").is_file()

    # Hide every other source of the ranks: they must come from the preset.
    monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(paths, "bundled_asset", lambda name: None)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))

    def offline():
        raise ConnectionError("no network in tests")

    monkeypatch.setattr(gpt_tokenizer_lib, "_download_ranks", offline)
    with pytest.raises(FileNotFoundError):
        GPTTokenizer()("check that nothing else is reachable")

    tokenizer = GPTTokenizer.from_preset(str(preset))
    assert tokenizer("Hello, world").tolist() == HELLO
    assert tokenizer.ranks_source.startswith(str(preset))
    preprocessor = GPTCausalLMPreprocessor.from_preset(str(preset))
    assert preprocessor.sequence_length == 8
    x, _, _ = as_numpy(preprocessor("Hello, world"))
    assert x["token_ids"].tolist() == [EOT, *HELLO, EOT, EOT, EOT, EOT]
