import json

import keras
import pytest

from keras_gpt_scratch.tokenizers.simple_tokenizer import SimpleTokenizer

BOOK_SENTENCE = (
    '"It\'s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
)
# The book's chapter 2 output for BOOK_SENTENCE.
BOOK_IDS = [1, 56, 2, 850, 988, 602, 533, 746, 5, 1126, 596, 5, 1, 67, 7, 38, 851]
BOOK_IDS += [1108, 754, 793, 7]


@pytest.fixture(scope="module")
def tokenizer(verdict_text):
    return SimpleTokenizer.from_text(verdict_text)


def test_split_follows_the_book_regex():
    assert SimpleTokenizer.split("Hello, world. Is this-- a test?") == [
        "Hello",
        ",",
        "world",
        ".",
        "Is",
        "this",
        "--",
        "a",
        "test",
        "?",
    ]


def test_vocabulary_of_the_verdict(tokenizer, verdict_text):
    assert len(set(SimpleTokenizer.split(verdict_text))) == 1130
    assert tokenizer.vocabulary_size() == 1132
    assert tokenizer.token_to_id("<|endoftext|>") == 1130
    assert tokenizer.token_to_id("<|unk|>") == 1131
    assert tokenizer.unknown_token_id == 1131
    vocabulary = tokenizer.get_vocabulary()
    assert vocabulary[:1130] == sorted(vocabulary[:1130])
    assert vocabulary[-2:] == ["<|endoftext|>", "<|unk|>"]


def test_encode_decode_book_example(tokenizer):
    ids = tokenizer.encode(BOOK_SENTENCE)
    assert ids == BOOK_IDS
    # The book's decode removes spaces before punctuation, not after it.
    assert tokenizer.decode(ids) == (
        '" It\' s the last he painted, you know," Mrs. Gisburn said with '
        "pardonable pride."
    )
    assert tokenizer.tokenize(BOOK_SENTENCE) == ids
    assert tokenizer.detokenize(ids) == tokenizer.decode(ids)


def test_unknown_words_and_end_of_text(tokenizer):
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of the palace."
    ids = tokenizer.encode(text)
    assert ids == [
        *[1131, 5, 355, 1126, 628, 975, 10, 1130],
        *[55, 988, 956, 984, 722, 988, 1131, 7],
    ]
    assert tokenizer.decode(ids) == (
        "<|unk|>, do you like tea? <|endoftext|> In the sunlit terraces of the <|unk|>."
    )


def test_decode_rejects_unknown_ids_and_bad_input(tokenizer):
    with pytest.raises(KeyError, match="1132"):
        tokenizer.decode([5, 1132])
    with pytest.raises(KeyError, match="-1"):
        tokenizer.decode([-1])
    with pytest.raises(TypeError, match="integers"):
        tokenizer.decode([1.5])
    with pytest.raises(TypeError, match="flat"):
        tokenizer.decode([[1, 2]])
    assert tokenizer.decode([]) == ""
    with pytest.raises(TypeError, match="str"):
        tokenizer.encode(b"bytes")
    with pytest.raises(KeyError, match="not in the vocabulary"):
        tokenizer.token_to_id("Hello")
    with pytest.raises(KeyError, match="9999"):
        tokenizer.id_to_token(9999)


def test_constructor_validates_vocabulary():
    with pytest.raises(ValueError, match="<\\|unk\\|>"):
        SimpleTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="twice"):
        SimpleTokenizer(["a", "a", "<|unk|>"])
    with pytest.raises(ValueError, match="same id"):
        SimpleTokenizer({"a": 0, "b": 0, "<|unk|>": 1})
    with pytest.raises(ValueError, match="empty"):
        SimpleTokenizer([])
    with pytest.raises(TypeError, match="dict"):
        SimpleTokenizer(42)
    # A dict with gaps in its ids is fine.
    tokenizer = SimpleTokenizer({"a": 10, "<|unk|>": 3})
    assert tokenizer.encode("a b") == [10, 3]


def test_serialization_round_trip(tokenizer):
    config = tokenizer.get_config()
    json.dumps(config)  # Plain JSON.
    assert len(config["vocabulary"]) == 1132
    serialized = keras.saving.serialize_keras_object(tokenizer)
    assert serialized["registered_name"] == "keras_gpt_scratch>SimpleTokenizer"
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert isinstance(restored, SimpleTokenizer)
    assert restored is not tokenizer
    assert restored.get_vocabulary() == tokenizer.get_vocabulary()
    assert restored.encode(BOOK_SENTENCE) == BOOK_IDS
    gaps = SimpleTokenizer({"a": 10, "<|unk|>": 3})
    assert SimpleTokenizer.from_config(gaps.get_config()).str_to_int == {
        "a": 10,
        "<|unk|>": 3,
    }
