"""The word-level tokenizer of the book's chapter 2."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import keras
import numpy as np

# Splits on punctuation, double dashes and whitespace, keeping the separators
# (the capturing group) so punctuation becomes tokens of its own.
SPLIT_PATTERN = re.compile(r'([,.:;?_!"()\']|--|\s)')
# `decode` joins tokens with spaces; this removes the space put before
# punctuation, as the book does.
JOIN_PATTERN = re.compile(r'\s+([,.?!"()\'])')

END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<|unk|>"


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class SimpleTokenizer:
    """A word-level tokenizer with a fixed vocabulary (book chapter 2).

    Text is split with the regex `([,.:;?_!"()\\']|--|\\s)`: words, punctuation
    and double dashes become tokens, whitespace is dropped. Words that are not
    in the vocabulary map to `<|unk|>`. This is the teaching tokenizer of the
    book's chapter 2; GPT-2 uses `keras_gpt_scratch.tokenizers.GPTTokenizer`.

    The tokenizer is a registered Keras-serializable object: `get_config()`
    holds the whole vocabulary, so `keras.saving.serialize_keras_object` and
    `deserialize_keras_object` round-trip it.

    Args:
        vocabulary: a mapping from token string to integer id, or a sequence
            of token strings (the id of each is its position). Ids must be
            unique and the vocabulary must contain `<|unk|>`, the id unknown
            words are mapped to.

    Example:

    ```python
    tokenizer = SimpleTokenizer.from_text(open("the-verdict.txt").read())
    ids = tokenizer.encode('"It\\'s the last he painted, you know," Mrs. Gisburn said.')
    tokenizer.decode(ids)
    tokenizer.encode("Hello, do you like tea?")  # "Hello" -> the <|unk|> id.
    ```
    """

    def __init__(self, vocabulary: Mapping[str, int] | Sequence[str]) -> None:
        if isinstance(vocabulary, Mapping):
            str_to_int = {str(token): int(index) for token, index in vocabulary.items()}
        elif isinstance(vocabulary, Iterable) and not isinstance(vocabulary, str):
            str_to_int = {}
            for index, token in enumerate(vocabulary):
                if token in str_to_int:
                    raise ValueError(
                        f"`vocabulary` lists the token {token!r} twice; each "
                        "token must appear once."
                    )
                str_to_int[token] = index
        else:
            raise TypeError(
                "`vocabulary` must be a dict of token -> id or a list of "
                f"tokens. Received: {type(vocabulary).__name__}."
            )
        if not str_to_int:
            raise ValueError("`vocabulary` is empty; it needs at least `<|unk|>`.")
        int_to_str = {index: token for token, index in str_to_int.items()}
        if len(int_to_str) != len(str_to_int):
            raise ValueError(
                "`vocabulary` maps several tokens to the same id; ids must be unique."
            )
        if UNKNOWN not in str_to_int:
            raise ValueError(
                f"`vocabulary` has no {UNKNOWN!r} token, so unknown words could "
                "not be encoded. Build it with `SimpleTokenizer.from_text()`, "
                f"or add {UNKNOWN!r} yourself."
            )
        self.str_to_int = str_to_int
        self.int_to_str = int_to_str

    @classmethod
    def from_text(
        cls,
        text: str,
        special_tokens: Sequence[str] = (END_OF_TEXT, UNKNOWN),
    ) -> SimpleTokenizer:
        """Builds the vocabulary from a text, as the book does.

        The vocabulary is the sorted set of the text's tokens followed by
        `special_tokens` (by default `<|endoftext|>` and `<|unk|>`, so they
        get the two last ids).

        Args:
            text: the training text.
            special_tokens: tokens appended after the words. Must include
                `<|unk|>`.
        """
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str. Received: {type(text).__name__}.")
        words = sorted(set(cls.split(text)))
        words += [token for token in special_tokens if token not in words]
        return cls(words)

    @staticmethod
    def split(text: str) -> list[str]:
        """Splits `text` into tokens (no vocabulary lookup)."""
        return [part.strip() for part in SPLIT_PATTERN.split(text) if part.strip()]

    @property
    def unknown_token_id(self) -> int:
        """The id that words outside the vocabulary are encoded to."""
        return self.str_to_int[UNKNOWN]

    def vocabulary_size(self) -> int:
        """Returns the number of tokens in the vocabulary."""
        return len(self.str_to_int)

    def get_vocabulary(self) -> list[str]:
        """Returns the tokens, ordered by id."""
        return [self.int_to_str[index] for index in sorted(self.int_to_str)]

    def token_to_id(self, token: str) -> int:
        """Returns the id of `token`; raises `KeyError` if it is unknown."""
        try:
            return self.str_to_int[token]
        except KeyError:
            raise KeyError(f"Token {token!r} is not in the vocabulary.") from None

    def id_to_token(self, id: int) -> str:
        """Returns the token with id `id`; raises `KeyError` if there is none."""
        try:
            return self.int_to_str[int(id)]
        except KeyError:
            raise KeyError(
                f"Id {id} is not in the vocabulary (size {len(self.int_to_str)})."
            ) from None

    def encode(self, text: str) -> list[int]:
        """Converts `text` to token ids; unknown words become `<|unk|>`."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str. Received: {type(text).__name__}.")
        unknown = self.unknown_token_id
        return [self.str_to_int.get(token, unknown) for token in self.split(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Converts token ids back to text.

        Tokens are joined with single spaces and the spaces before punctuation
        removed, as in the book, so the original spacing is not restored
        exactly.

        Raises:
            KeyError: an id is not in the vocabulary.
        """
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise TypeError(
                "`ids` must be a flat sequence of integers. Received an array "
                f"of shape {ids.shape} and dtype {ids.dtype}."
            )
        tokens = []
        for index in ids.tolist():
            if index not in self.int_to_str:
                raise KeyError(
                    f"Cannot decode id {index}: it is not in the vocabulary "
                    f"(size {len(self.int_to_str)})."
                )
            tokens.append(self.int_to_str[index])
        return JOIN_PATTERN.sub(r"\1", " ".join(tokens))

    # Alias so the sliding-window loader and other code can treat this like
    # the keras-hub tokenizers.
    def tokenize(self, text: str) -> list[int]:
        """Same as `encode`."""
        return self.encode(text)

    def detokenize(self, ids: Iterable[int]) -> str:
        """Same as `decode`."""
        return self.decode(ids)

    def get_config(self) -> dict:
        # A dict (not the id-ordered list) so vocabularies with gaps in their
        # ids round-trip too.
        return {"vocabulary": dict(self.str_to_int)}

    @classmethod
    def from_config(cls, config: dict) -> SimpleTokenizer:
        return cls(**config)
