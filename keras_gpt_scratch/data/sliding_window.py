"""The book's sliding-window data loader (`create_dataloader_v1`) on tf.data."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

END_OF_TEXT = "<|endoftext|>"


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be a positive int. Received: {value!r}.")
    if value <= 0:
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value}.")
    return int(value)


def num_windows(num_tokens: int, context_length: int, stride: int) -> int:
    """Returns how many windows a text of `num_tokens` tokens gives.

    A window starts every `stride` tokens and needs `context_length + 1`
    tokens (its inputs plus the next-token target of the last one), exactly as
    the book's `GPTDatasetV1`: starts `0, stride, 2 * stride, ...` while
    `start < num_tokens - context_length`.

    Args:
        num_tokens: the length of the token sequence.
        context_length: tokens per window (the model's context).
        stride: tokens between the starts of two windows.
    """
    context_length = _check_positive_int("context_length", context_length)
    stride = _check_positive_int("stride", stride)
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, (int, np.integer)):
        raise ValueError(f"`num_tokens` must be an int. Received: {num_tokens!r}.")
    if num_tokens < context_length + 1:
        return 0
    return (int(num_tokens) - context_length - 1) // stride + 1


def _tokenize(text: str, tokenizer: Any) -> np.ndarray:
    if tokenizer is None:
        from keras_gpt_scratch.tokenizers.gpt_tokenizer import GPTTokenizer

        # Documents joined by `load_text_files` are separated by
        # <|endoftext|>, the book's convention: keep it as the special id.
        tokenizer = GPTTokenizer(allowed_special=[END_OF_TEXT])
    if hasattr(tokenizer, "tokenize"):
        ids = tokenizer.tokenize(text)
    elif hasattr(tokenizer, "encode"):
        # tiktoken encodings and other book-style tokenizers.
        ids = tokenizer.encode(text)
    else:
        raise TypeError(
            "`tokenizer` must have a `tokenize(text)` or `encode(text)` method. "
            f"Received: {type(tokenizer).__name__}."
        )
    return np.asarray(ids)


def _vocabulary_size_of(tokenizer: Any) -> int | None:
    if tokenizer is None:
        return 50257
    size = getattr(tokenizer, "vocabulary_size", None)
    if callable(size):
        return int(size())
    n_vocab = getattr(tokenizer, "n_vocab", None)  # tiktoken.Encoding
    return int(n_vocab) if n_vocab is not None else None


def create_dataset(
    text_or_ids: str | np.ndarray | tf.Tensor | list[int],
    *,
    context_length: int,
    stride: int,
    batch_size: int,
    shuffle: bool = True,
    seed: int | None = None,
    drop_remainder: bool = True,
    tokenizer: Any = None,
    vocabulary_size: int | None = None,
    repeat: bool = False,
    prefetch: bool = True,
) -> tf.data.Dataset:
    """Batches of sliding windows over one token sequence, for `fit()`.

    The tf.data version of the book's `create_dataloader_v1`. The text is
    tokenized once and kept as a single int32 tensor; each batch is gathered
    from it with a `(batch_size, context_length + 1)` index matrix, so the
    windows are never materialised: memory stays close to the size of the
    token array whatever the stride. Shuffling permutes window indices with
    `tf.random.experimental.index_shuffle`, which needs no buffer either.

    Each element is `(x, y)`: `x = {"token_ids": int32 (B, T),
    "padding_mask": bool (B, T), all True}` and `y = int32 (B, T)`, the
    inputs shifted left by one token. That is the format `GPTCausalLM`
    consumes without a preprocessor.

    Args:
        text_or_ids: a string to tokenize, or a 1-D sequence of token ids
            (list, NumPy array or tensor).
        context_length: tokens per window, `T`.
        stride: tokens between the starts of consecutive windows (the book
            uses `stride = context_length` for no overlap).
        batch_size: windows per batch, `B`.
        shuffle: whether to visit windows in a random order, a new one each
            time the dataset is iterated (each epoch).
        seed: makes the shuffled orders reproducible: the same seed gives the
            same sequence of epoch orders. `None` for a random order.
        drop_remainder: drop the last, smaller batch (the book's
            `drop_last=True`), so every batch has a static shape.
        tokenizer: used when `text_or_ids` is a string: any object with
            `tokenize(text)` or `encode(text)` returning ids. Defaults to a
            `GPTTokenizer` that encodes `<|endoftext|>` in the text as the
            special id 50256 (documents joined by `load_text_files`).
        vocabulary_size: if given, every id must be in `[0, vocabulary_size)`.
            Defaults to the tokenizer's size when a string is tokenized.
        repeat: repeat forever (each repetition reshuffled); then pass
            `steps_per_epoch` to `fit()`.
        prefetch: prefetch batches with `tf.data.AUTOTUNE`.

    Returns:
        A `tf.data.Dataset`. Unless `repeat`, its `cardinality()` is the
        number of batches. Its options switch tf.data's autotuning off
        (`options().autotune.enabled` is False: the thread delayed `fit()`'s
        return), and pipelines built on it inherit that; `AUTOTUNE`
        parallelism then defaults to the number of cores. Turn it back on
        with `ds.with_options(opts)` where `opts.autotune.enabled = True`.

    Raises:
        ValueError: an argument is not positive, the text is empty or too
            short for one window, an id is out of range, or `drop_remainder`
            would leave no batch.

    Example:

    ```python
    text = keras_gpt_scratch.data.load_the_verdict()
    ds = create_dataset(
        text, context_length=4, stride=1, batch_size=1, shuffle=False
    )
    x, y = next(iter(ds))
    x["token_ids"]  # [[40, 367, 2885, 1464]]
    y               # [[367, 2885, 1464, 1807]]
    ```
    """
    context_length = _check_positive_int("context_length", context_length)
    stride = _check_positive_int("stride", stride)
    batch_size = _check_positive_int("batch_size", batch_size)

    if isinstance(text_or_ids, bytes):
        text_or_ids = text_or_ids.decode("utf-8")
    if isinstance(text_or_ids, str):
        if not text_or_ids:
            raise ValueError(
                "The text is empty, so there is nothing to make windows from. "
                "Pass a non-empty text or token ids."
            )
        ids = _tokenize(text_or_ids, tokenizer)
        if vocabulary_size is None:
            vocabulary_size = _vocabulary_size_of(tokenizer)
        source = "The text"
    else:
        if isinstance(text_or_ids, (tf.Tensor, tf.Variable)):
            text_or_ids = text_or_ids.numpy()
        ids = np.asarray(text_or_ids)
        source = "The token sequence"
    if ids.ndim != 1:
        raise ValueError(
            f"Token ids must be 1-D; received shape {ids.shape}. Concatenate "
            "your documents (with <|endoftext|> between them) first."
        )
    if ids.size == 0:
        raise ValueError(
            "The token sequence is empty, so there is nothing to make windows from."
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"Token ids must be integers; received dtype {ids.dtype}.")

    low, high = int(ids.min()), int(ids.max())
    if low < 0:
        raise ValueError(f"Token ids must be non-negative; found {low}.")
    if vocabulary_size is not None and high >= vocabulary_size:
        raise ValueError(
            f"Token ids must be in [0, {vocabulary_size}); found {high}. Check "
            "that the tokenizer matches the model's vocabulary."
        )
    if high > np.iinfo(np.int32).max:
        raise ValueError(f"Token id {high} does not fit in int32.")

    count = num_windows(ids.size, context_length, stride)
    if count == 0:
        raise ValueError(
            f"{source} has {ids.size} tokens, but one window needs "
            f"context_length + 1 = {context_length + 1} (the inputs plus the "
            "next-token target). Use a longer text or a smaller "
            "`context_length`."
        )
    if drop_remainder and batch_size > count:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {count} windows "
            f"(context_length={context_length}, stride={stride}, "
            f"{ids.size} tokens), so with drop_remainder=True no batch would "
            "be left. Use a smaller `batch_size` or `stride`, or "
            "drop_remainder=False."
        )
    num_batches = count // batch_size if drop_remainder else -(-count // batch_size)

    tokens = tf.constant(ids.astype(np.int32))
    offsets = tf.range(context_length + 1, dtype=tf.int64)
    max_index = tf.constant(count - 1, tf.int64)

    def gather_windows(window_indices):
        starts = window_indices * stride
        windows = tf.gather(tokens, starts[:, None] + offsets[None, :])
        inputs, targets = windows[:, :-1], windows[:, 1:]
        x = {
            "token_ids": inputs,
            "padding_mask": tf.ones_like(inputs, dtype=tf.bool),
        }
        return x, targets

    def batches(permutation_seed=None):
        indices = tf.data.Dataset.range(count).batch(
            batch_size, drop_remainder=drop_remainder
        )
        if permutation_seed is not None:
            indices = indices.map(
                lambda i: tf.random.experimental.index_shuffle(
                    i, permutation_seed, max_index
                )
            )
        return indices.map(gather_windows, num_parallel_calls=tf.data.AUTOTUNE)

    if shuffle:
        # One stateless permutation per iteration, keyed by a fresh draw of
        # `Dataset.random`, which is reproducible from `seed` and re-drawn
        # each epoch.
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        keys = keys.batch(2, drop_remainder=True).take(1)
        dataset = keys.flat_map(batches)
    else:
        dataset = batches()
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_batches))
    if repeat:
        dataset = dataset.repeat()
    if prefetch:
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    # tf.data's autotuning thread (TF 2.21) can hold up the iterator's deletion
    # until its next tuning period (measured: fit() returned up to 1.4 s after
    # its last step; the period can grow to 60 s). A gather per batch needs no
    # tuning (the same tokens/s either way).
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
