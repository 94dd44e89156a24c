import hashlib
import json
import os
import random
import shutil

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models as hf_models
from tokenizers import pre_tokenizers as hf_pre_tokenizers

from keras_gpt_scratch import paths
from keras_gpt_scratch.tokenizers import gpt_tokenizer as gpt_tokenizer_lib
from keras_gpt_scratch.tokenizers.gpt_tokenizer import GPTTokenizer

README_SENTENCE = (
    "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
)
README_IDS = [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252]
README_IDS += [18250, 8812, 2114, 286, 617, 34680, 27271, 13]
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# "<|endoftext|>" spelled out as ordinary text.
END_OF_TEXT_AS_TEXT = [27, 91, 437, 1659, 5239, 91, 29]

# Texts on which keras_hub's GPT2Tokenizer (both its paths) agrees with
# OpenAI's GPT-2 BPE: unicode (accents, CJK, emoji, flags), digits,
# whitespace runs, tabs and newlines.
KERAS_HUB_SAMPLE = [
    "Hello, world",
    "12345 678901234 3.14159 1,000,000",
    "  leading   spaces\n\n\nnewlines\t\ttabs  ",
    "café naïve Ünïcödé résumé",
    "日本語のテキスト 中文 한국어",
    "emoji 😀👍🏽 🇫🇷 and 🤷\u200d♀️",
    "I'm you'll they've we're he'd",
    "trailing space ",
    " ",
    "a\r\nb",
    "foo  \n bar",
    "x = {'a': [1, 2]}  # comment",
    "ALL CAPS, MiXeD cAsE",
]


def random_texts(count: int, length: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = "ab cdeXYZ012 \n\t.,'!é日😀\u00a0\u2009\r"
    return ["".join(rng.choice(alphabet) for _ in range(length)) for _ in range(count)]


@pytest.fixture(scope="module")
def keras_hub_gpt2(data_dir):
    return keras_hub.models.GPT2Tokenizer(
        vocabulary=str(data_dir / "gpt2/encoder.json"),
        merges=str(data_dir / "gpt2/vocab.bpe"),
    )


@pytest.fixture
def no_ranks_sources(monkeypatch, tmp_path):
    """Hides every source of the ranks but the ones a test adds back."""
    monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(paths, "bundled_asset", lambda name: None)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))

    def offline():
        raise ConnectionError("no network in tests")

    monkeypatch.setattr(gpt_tokenizer_lib, "_download_ranks", offline)


# === Known answers ===


def test_hello_world(gpt_tokenizer):
    ids = gpt_tokenizer("Hello, world")
    assert isinstance(ids, np.ndarray)
    assert ids.dtype == np.int32
    assert ids.tolist() == [15496, 11, 995]
    assert gpt_tokenizer.encode("Hello, world") == [15496, 11, 995]


def test_special_token_is_plain_text_unless_allowed(gpt_tokenizer):
    ids = gpt_tokenizer(README_SENTENCE).tolist()
    # " <|endoftext|>" as text: " <", "|", "end", "of", "text", "|", ">".
    assert ids == README_IDS[:7] + [1279, 91, 437, 1659, 5239, 91, 29] + README_IDS[9:]
    assert gpt_tokenizer("<|endoftext|>").tolist() == END_OF_TEXT_AS_TEXT
    # Per call, or per layer.
    allowed = gpt_tokenizer.tokenize(README_SENTENCE, allowed_special="all")
    assert allowed.tolist() == README_IDS
    assert gpt_tokenizer.encode(README_SENTENCE, allowed_special="all") == README_IDS
    layer = GPTTokenizer(allowed_special={"<|endoftext|>"})
    assert layer(README_SENTENCE).tolist() == README_IDS
    assert layer.tokenize(README_SENTENCE, allowed_special=()).tolist() == ids
    with pytest.raises(ValueError, match="<\\|fim_prefix\\|>"):
        GPTTokenizer(allowed_special=["<|fim_prefix|>"])


def test_the_verdict(gpt_tokenizer, verdict_text):
    ids = gpt_tokenizer(verdict_text)
    assert len(ids) == 5145
    assert ids[:5].tolist() == [40, 367, 2885, 1464, 1807]


def test_tiny_shakespeare(shakespeare_ids):
    assert len(shakespeare_ids) == 338_025


def test_vocabulary(gpt_tokenizer, data_dir):
    assert gpt_tokenizer.vocabulary_size() == 50257
    assert gpt_tokenizer.start_token_id == 50256
    assert gpt_tokenizer.end_token_id == 50256
    assert gpt_tokenizer.pad_token_id == 50256
    assert gpt_tokenizer.special_token_ids == [50256]
    encoder = json.loads((data_dir / "gpt2/encoder.json").read_text("utf-8"))
    vocabulary = gpt_tokenizer.get_vocabulary()
    assert vocabulary == sorted(encoder, key=encoder.get)
    assert gpt_tokenizer.id_to_token(995) == "Ġworld"
    assert gpt_tokenizer.token_to_id("Ġworld") == 995
    assert gpt_tokenizer.id_to_token(50256) == "<|endoftext|>"
    with pytest.raises(ValueError, match="50257"):
        gpt_tokenizer.id_to_token(50257)
    with pytest.raises(ValueError, match="not in GPT-2's vocabulary"):
        gpt_tokenizer.token_to_id("not a token")


# === Agreement with other implementations ===


def test_matches_keras_hub_gpt2_tokenizer(gpt_tokenizer, keras_hub_gpt2):
    ours = gpt_tokenizer(KERAS_HUB_SAMPLE)
    theirs = keras_hub_gpt2(KERAS_HUB_SAMPLE)
    assert ours == [list(map(int, ids)) for ids in theirs]
    assert any(len(ids) > 10 for ids in ours)
    # keras_hub's TF path (used in tf.data) too, and its vocabulary.
    theirs_tf = tf.function(keras_hub_gpt2.tokenize)(tf.constant(KERAS_HUB_SAMPLE))
    assert ours == theirs_tf.to_list()
    assert gpt_tokenizer.get_vocabulary() == list(keras_hub_gpt2.get_vocabulary())


def test_matches_reference_byte_level_bpe_on_random_text(gpt_tokenizer, data_dir):
    # Hugging Face's ByteLevel BPE with GPT-2's own split regex, an
    # independent implementation of OpenAI's tokenizer. keras_hub's
    # GPT2Tokenizer differs from both on some of these (e.g. "\n\n" before a
    # letter, " \u00a0", upper-case contractions), so it is not the reference.
    reference = HFTokenizer(
        hf_models.BPE.from_file(
            str(data_dir / "gpt2/encoder.json"), str(data_dir / "gpt2/vocab.bpe")
        )
    )
    reference.pre_tokenizer = hf_pre_tokenizers.ByteLevel(
        add_prefix_space=False, use_regex=True
    )
    texts = random_texts(300, 60, seed=0)
    texts += ["e\n\neY", "x \u00a0y", "I'M HE'S 'tis", "\x00\x01ctrl", "a\u0085b"]
    expected = [reference.encode(text).ids for text in texts]
    assert gpt_tokenizer(texts) == expected


def test_round_trip_is_lossless(gpt_tokenizer):
    texts = KERAS_HUB_SAMPLE + random_texts(50, 40, seed=1) + [""]
    ids = gpt_tokenizer(texts)
    assert gpt_tokenizer.detokenize(ids) == texts
    detokenize = tf.function(gpt_tokenizer.detokenize)
    ragged = tf.ragged.constant(ids, dtype=tf.int32, ragged_rank=1)
    decoded = [text.decode("utf-8") for text in detokenize(ragged).numpy()]
    assert decoded == texts


# === Input and output types ===


def test_python_input_types(gpt_tokenizer):
    expected = [[15496, 11, 995], [64]]
    assert gpt_tokenizer(["Hello, world", "a"]) == expected
    assert gpt_tokenizer(("Hello, world", "a")) == expected
    assert gpt_tokenizer(np.array(["Hello, world", "a"])) == expected
    assert gpt_tokenizer(np.array([b"Hello, world", b"a"])) == expected
    assert gpt_tokenizer(np.array(["Hello, world", "a"], dtype=object)) == expected
    assert gpt_tokenizer(tf.constant(["Hello, world", "a"])) == expected
    assert gpt_tokenizer(b"Hello, world").tolist() == expected[0]
    assert gpt_tokenizer(np.array("Hello, world")).tolist() == expected[0]
    scalar = gpt_tokenizer(tf.constant("Hello, world"))
    assert isinstance(scalar, np.ndarray) and scalar.tolist() == expected[0]
    assert gpt_tokenizer([]) == []
    assert gpt_tokenizer("").tolist() == []


def test_bad_inputs(gpt_tokenizer):
    with pytest.raises(ValueError, match="UTF-8"):
        gpt_tokenizer(b"\xff\xfe bad")
    with pytest.raises(TypeError, match="not a string"):
        gpt_tokenizer(["ok", 3])
    with pytest.raises(TypeError, match="dtype"):
        gpt_tokenizer(np.array([1, 2]))
    with pytest.raises(ValueError, match="shape"):
        gpt_tokenizer(np.array([["a", "b"]]))
    with pytest.raises(TypeError, match="Received: int"):
        gpt_tokenizer(42)
    with pytest.raises(ValueError, match="integer"):
        GPTTokenizer(dtype="float32")
    with pytest.raises(ValueError, match="sequence_length"):
        GPTTokenizer(sequence_length=0)


def test_sequence_length_pads_and_truncates(gpt_tokenizer):
    tokenizer = GPTTokenizer(sequence_length=4)
    batch = tokenizer(["Hello, world", "Hello, world, hello, world"])
    assert isinstance(batch, np.ndarray)
    assert batch.tolist() == [[15496, 11, 995, 50256], [15496, 11, 995, 11]]
    assert tokenizer("Hello").tolist() == [15496, 50256, 50256, 50256]
    graph = tf.function(tokenizer.tokenize)
    assert graph(tf.constant(["Hello, world"])).numpy().tolist() == [batch[0].tolist()]
    assert graph(tf.constant("Hello")).shape == (4,)


def test_detokenize_input_types_and_strips_nothing(gpt_tokenizer):
    assert gpt_tokenizer.detokenize([15496, 11, 995]) == "Hello, world"
    assert gpt_tokenizer.detokenize(np.array([15496, 11, 995])) == "Hello, world"
    assert gpt_tokenizer.detokenize(tf.constant([15496, 11])) == "Hello,"
    assert gpt_tokenizer.detokenize(995) == " world"
    assert gpt_tokenizer.detokenize([50256, 15496, 50256]) == (
        "<|endoftext|>Hello<|endoftext|>"
    )
    assert gpt_tokenizer.detokenize(np.array([[15496, 11], [995, 50256]])) == [
        "Hello,",
        " world<|endoftext|>",
    ]
    assert gpt_tokenizer.detokenize([[15496], [11, 995]]) == ["Hello", ", world"]
    assert gpt_tokenizer.detokenize(tf.ragged.constant([[15496], [11, 995]])) == [
        "Hello",
        ", world",
    ]
    assert gpt_tokenizer.decode([15496, 11, 995]) == "Hello, world"
    # A cut inside a multi-byte character decodes to U+FFFD, not an error.
    assert gpt_tokenizer.detokenize([47249]) == "\ufffd"  # Half of "😀".
    assert gpt_tokenizer("😀").tolist() == [47249, 222]
    with pytest.raises(ValueError, match="50257"):
        gpt_tokenizer.detokenize([50257])
    with pytest.raises(ValueError, match="-1"):
        gpt_tokenizer.detokenize([-1])
    with pytest.raises(TypeError, match="integer"):
        gpt_tokenizer.detokenize([1.5])
    with pytest.raises(ValueError, match="batch"):
        gpt_tokenizer.decode([[1], [2]])


# === TensorFlow graphs and tf.data ===


def test_tf_function(gpt_tokenizer):
    @tf.function
    def tokenize(texts):
        return gpt_tokenizer(texts)

    ragged = tokenize(tf.constant(["Hello, world", "a", ""]))
    assert isinstance(ragged, tf.RaggedTensor)
    assert ragged.dtype == tf.int32
    assert ragged.to_list() == [[15496, 11, 995], [64], []]
    dense = tokenize(tf.constant("Hello, world"))
    assert isinstance(dense, tf.Tensor)
    assert dense.shape.rank == 1
    assert dense.numpy().tolist() == [15496, 11, 995]
    assert tf.function(lambda: gpt_tokenizer("Hello"))().numpy().tolist() == [15496]


def test_in_tf_data_pipeline(gpt_tokenizer):
    texts = KERAS_HUB_SAMPLE + random_texts(40, 30, seed=2)
    expected = gpt_tokenizer(texts)
    batched = tf.data.Dataset.from_tensor_slices(texts).batch(8)
    batched = batched.map(gpt_tokenizer, num_parallel_calls=tf.data.AUTOTUNE)
    assert isinstance(batched.element_spec, tf.RaggedTensorSpec)
    got = [row for batch in batched for row in batch.to_list()]
    assert got == expected
    unbatched = tf.data.Dataset.from_tensor_slices(texts).map(
        gpt_tokenizer, num_parallel_calls=tf.data.AUTOTUNE
    )
    assert unbatched.element_spec == tf.TensorSpec([None], tf.int32)
    assert [ids.numpy().tolist() for ids in unbatched] == expected
    allowed = GPTTokenizer(allowed_special="all")
    dataset = tf.data.Dataset.from_tensors(README_SENTENCE).map(allowed)
    assert next(iter(dataset)).numpy().tolist() == README_IDS


def test_tf_path_rejects_bad_input(gpt_tokenizer):
    with pytest.raises(ValueError, match="rank|shape"):
        tf.function(gpt_tokenizer.tokenize)(tf.constant([["a"]]))
    with pytest.raises(TypeError, match="string"):
        tf.function(gpt_tokenizer.tokenize)(tf.constant([1, 2]))
    bad = tf.data.Dataset.from_tensors(tf.constant(b"\xff")).map(gpt_tokenizer)
    with pytest.raises(tf.errors.InvalidArgumentError, match="UTF-8"):
        next(iter(bad))


# === Serialization and assets ===


def test_config_round_trip(data_dir):
    tokenizer = GPTTokenizer(
        ranks_path=data_dir / "gpt2", sequence_length=5, allowed_special="all"
    )
    config = tokenizer.get_config()
    assert config["ranks_path"] == str(data_dir / "gpt2")
    assert config["sequence_length"] == 5
    assert config["allowed_special"] == "all"
    restored = GPTTokenizer.from_config(json.loads(json.dumps(config)))
    assert restored.get_config() == config
    serialized = keras.saving.serialize_keras_object(tokenizer)
    assert serialized["registered_name"] == "keras_gpt_scratch>GPTTokenizer"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, GPTTokenizer)
    assert restored(README_SENTENCE).tolist() == README_IDS[:5]
    plain = GPTTokenizer(allowed_special=["<|endoftext|>"]).get_config()
    assert plain["allowed_special"] == ["<|endoftext|>"]


def test_save_and_load_assets(gpt_tokenizer, tmp_path, no_ranks_sources):
    gpt_tokenizer.save_assets(str(tmp_path))
    saved = tmp_path / "gpt2.tiktoken"
    assert paths.sha256_file(saved) == RANKS_SHA256
    restored = GPTTokenizer(ranks_path="/nonexistent/ranks")  # Never read.
    restored.load_assets(str(tmp_path))
    assert restored.ranks_source == str(tmp_path)
    assert restored("Hello, world").tolist() == [15496, 11, 995]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="gpt2.tiktoken"):
        GPTTokenizer().load_assets(str(empty))


def test_from_builtin_preset_name():
    tokenizer = GPTTokenizer.from_preset("gpt_tiny", sequence_length=3)
    assert isinstance(tokenizer, GPTTokenizer)
    assert tokenizer("Hello, world, hi").tolist() == [15496, 11, 995]
    assert "gpt_tiny" in GPTTokenizer.presets
    with pytest.raises(ValueError, match="Unknown preset"):
        GPTTokenizer.from_preset("no_such_preset")


# === Where the ranks come from ===


def test_ranks_from_explicit_paths(data_dir, tmp_path):
    file = GPTTokenizer(ranks_path=data_dir / "gpt2/gpt2.tiktoken")
    assert file("Hello").tolist() == [15496]
    assert file.ranks_source == str(data_dir / "gpt2/gpt2.tiktoken")
    folder = GPTTokenizer(ranks_path=str(data_dir))  # A data dir, via gpt2/.
    assert folder("Hello").tolist() == [15496]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GPTTokenizer(ranks_path=tmp_path / "missing.tiktoken")("Hello")
    with pytest.raises(ValueError, match="folder that holds both"):
        GPTTokenizer(ranks_path=data_dir / "gpt2/encoder.json")("Hello")
    with pytest.raises(FileNotFoundError, match="folder without"):
        GPTTokenizer(ranks_path=tmp_path)("Hello")


def test_ranks_from_encoder_json_and_vocab_bpe(data_dir, tmp_path, monkeypatch):
    # Clear the per-process cache so the conversion really runs.
    monkeypatch.setattr(gpt_tokenizer_lib, "_BPE_CACHE", {})
    folder = tmp_path / "data-gym"
    folder.mkdir()
    shutil.copy(data_dir / "gpt2/encoder.json", folder)
    shutil.copy(data_dir / "gpt2/vocab.bpe", folder)
    tiktoken_cache = tmp_path / "tiktoken-cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tiktoken_cache))
    tokenizer = GPTTokenizer(ranks_path=folder)
    assert tokenizer(README_SENTENCE, allowed_special="all").tolist() == README_IDS
    assert tokenizer.id_to_token(995) == "Ġworld"
    # tiktoken was kept from copying the local files into its cache.
    assert not tiktoken_cache.exists()
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(tiktoken_cache)


def test_ranks_from_data_dir_env(data_dir, monkeypatch):
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(data_dir))
    tokenizer = GPTTokenizer()
    assert tokenizer("Hello").tolist() == [15496]
    assert tokenizer.ranks_source == str(data_dir / "gpt2")


def test_ranks_from_bundled_copy(monkeypatch):
    monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
    tokenizer = GPTTokenizer()
    assert tokenizer("Hello").tolist() == [15496]
    bundled = paths.bundled_asset("gpt2.tiktoken")
    assert bundled is not None
    assert tokenizer.ranks_source == str(bundled)
    assert paths.sha256_file(bundled) == RANKS_SHA256


def test_ranks_from_tiktoken_cache(data_dir, tmp_path, no_ranks_sources):
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    name = hashlib.sha1(gpt_tokenizer_lib.R50K_URL.encode()).hexdigest()
    shutil.copy(data_dir / "gpt2/gpt2.tiktoken", cache / name)
    tokenizer = GPTTokenizer()
    assert tokenizer("Hello").tolist() == [15496]
    assert tokenizer.ranks_source == str(cache / name)


def test_ranks_from_download(data_dir, monkeypatch, no_ranks_sources):
    def fake_download():
        return gpt_tokenizer_lib._load_tiktoken_file(data_dir / "gpt2/gpt2.tiktoken")

    monkeypatch.setattr(gpt_tokenizer_lib, "_download_ranks", fake_download)
    tokenizer = GPTTokenizer()
    assert tokenizer("Hello").tolist() == [15496]
    assert tokenizer.ranks_source == gpt_tokenizer_lib.R50K_URL


def test_offline_without_ranks_names_every_place(no_ranks_sources):
    tokenizer = GPTTokenizer()  # Lazy: constructing needs no ranks.
    with pytest.raises(FileNotFoundError) as error:
        tokenizer("Hello")
    message = str(error.value)
    for expected in (
        "KERAS_GPT_SCRATCH_DATA: not set",
        "bundled",
        "tiktoken's cache",
        "download of https://",
        "ConnectionError",
        "ranks_path=",
    ):
        assert expected in message


def test_bad_ranks_files_are_rejected(
    data_dir, tmp_path, monkeypatch, no_ranks_sources
):
    corrupt = tmp_path / "gpt2.tiktoken"
    data = (data_dir / "gpt2/gpt2.tiktoken").read_bytes()
    corrupt.write_bytes(data[:-10])
    with pytest.raises(paths.ChecksumError, match="SHA-256"):
        GPTTokenizer(ranks_path=corrupt)("Hello")
    # A corrupt file in the user's data dir is an error, not skipped.
    data_root = tmp_path / "data"
    (data_root / "gpt2").mkdir(parents=True)
    shutil.copy(corrupt, data_root / "gpt2/gpt2.tiktoken")
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(data_root))
    with pytest.raises(paths.ChecksumError, match=str(data_root)):
        GPTTokenizer()("Hello")
    # A corrupt copy in tiktoken's cache is skipped (and reported).
    monkeypatch.delenv(paths.DATA_DIR_ENV)
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    name = hashlib.sha1(gpt_tokenizer_lib.R50K_URL.encode()).hexdigest()
    shutil.copy(corrupt, cache / name)
    with pytest.raises(FileNotFoundError, match="SHA-256"):
        GPTTokenizer()("Hello")
