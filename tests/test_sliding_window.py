import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from keras_gpt_scratch.data.sliding_window import create_dataset, num_windows
from keras_gpt_scratch.tokenizers.simple_tokenizer import SimpleTokenizer


def book_windows(ids, context_length, stride):
    """The book's `GPTDatasetV1`, materialised: the reference."""
    inputs, targets = [], []
    for i in range(0, len(ids) - context_length, stride):
        inputs.append(ids[i : i + context_length])
        targets.append(ids[i + 1 : i + context_length + 1])
    return np.array(inputs), np.array(targets)


def collect(dataset):
    xs, masks, ys = [], [], []
    for x, y in dataset:
        xs.append(x["token_ids"].numpy())
        masks.append(x["padding_mask"].numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(masks), np.concatenate(ys)


def test_book_example_on_the_verdict(verdict_text, gpt_tokenizer):
    dataset = create_dataset(
        verdict_text,
        context_length=4,
        stride=1,
        batch_size=1,
        shuffle=False,
        tokenizer=gpt_tokenizer,
    )
    batches = iter(dataset)
    x, y = next(batches)
    assert x["token_ids"].numpy().tolist() == [[40, 367, 2885, 1464]]
    assert y.numpy().tolist() == [[367, 2885, 1464, 1807]]
    x, y = next(batches)
    assert x["token_ids"].numpy().tolist() == [[367, 2885, 1464, 1807]]
    assert y.numpy().tolist() == [[2885, 1464, 1807, 3619]]
    assert int(dataset.cardinality()) == 5145 - 4


def test_element_spec_and_contents_match_the_book():
    ids = np.arange(100, 150)
    dataset = create_dataset(
        ids, context_length=5, stride=3, batch_size=4, shuffle=False
    )
    x_spec, y_spec = dataset.element_spec
    assert x_spec["token_ids"] == tf.TensorSpec((4, 5), tf.int32)
    assert x_spec["padding_mask"] == tf.TensorSpec((4, 5), tf.bool)
    assert y_spec == tf.TensorSpec((4, 5), tf.int32)
    inputs, masks, targets = collect(dataset)
    expected_inputs, expected_targets = book_windows(ids, 5, 3)
    assert len(expected_inputs) == num_windows(50, 5, 3) == 15
    # drop_remainder: 15 windows -> 3 full batches of 4.
    np.testing.assert_array_equal(inputs, expected_inputs[:12])
    np.testing.assert_array_equal(targets, expected_targets[:12])
    assert masks.all()
    assert int(dataset.cardinality()) == 3


def test_keep_remainder():
    ids = np.arange(50)
    dataset = create_dataset(
        ids,
        context_length=5,
        stride=3,
        batch_size=4,
        shuffle=False,
        drop_remainder=False,
    )
    assert int(dataset.cardinality()) == 4
    inputs, _, targets = collect(dataset)
    expected_inputs, expected_targets = book_windows(ids, 5, 3)
    np.testing.assert_array_equal(inputs, expected_inputs)
    np.testing.assert_array_equal(targets, expected_targets)


@pytest.mark.parametrize("num_tokens", [1, 5, 6, 7, 17, 100, 101])
@pytest.mark.parametrize(
    "context_length,stride", [(1, 1), (5, 1), (5, 2), (5, 5), (5, 7)]
)
def test_num_windows_matches_the_book(num_tokens, context_length, stride):
    expected = len(range(0, num_tokens - context_length, stride))
    assert num_windows(num_tokens, context_length, stride) == expected


def test_seeded_shuffle_is_reproducible_and_a_permutation():
    ids = np.arange(300)

    def make(seed):
        return create_dataset(
            ids,
            context_length=4,
            stride=2,
            batch_size=8,
            seed=seed,
            drop_remainder=False,
        )

    def epoch(dataset):
        return collect(dataset)[0][:, 0] // 2  # Window index of each row.

    first = make(seed=7)
    epoch_1, epoch_2 = epoch(first), epoch(first)
    count = num_windows(300, 4, 2)
    for order in (epoch_1, epoch_2):
        assert sorted(order.tolist()) == list(range(count))
    assert epoch_1.tolist() != list(range(count))  # Shuffled...
    assert epoch_1.tolist() != epoch_2.tolist()  # ...anew each epoch.
    again = make(seed=7)
    assert epoch(again).tolist() == epoch_1.tolist()
    assert epoch(again).tolist() == epoch_2.tolist()
    assert epoch(make(seed=8)).tolist() != epoch_1.tolist()
    unseeded = epoch(make(seed=None))
    assert sorted(unseeded.tolist()) == list(range(count))
    # Targets still follow their inputs after shuffling.
    x, y = next(iter(make(seed=7)))
    np.testing.assert_array_equal(x["token_ids"].numpy()[:, 1:], y.numpy()[:, :-1])


def test_repeat_reshuffles_each_pass():
    dataset = create_dataset(
        np.arange(39), context_length=3, stride=1, batch_size=36, seed=1, repeat=True
    )
    assert int(dataset.cardinality()) == tf.data.INFINITE_CARDINALITY
    first, second, third = [x["token_ids"].numpy()[:, 0] for x, _ in dataset.take(3)]
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(36))
    assert first.tolist() != second.tolist() or second.tolist() != third.tolist()


@pytest.mark.parametrize("repeat", [False, True])
def test_autotuning_is_off_and_stays_off_downstream(repeat):
    # TF 2.21's autotuning thread delayed fit()'s return by up to its tuning
    # period (seconds) when the iterator was deleted (see create_dataset).
    dataset = create_dataset(
        np.arange(40), context_length=4, stride=2, batch_size=4, repeat=repeat
    )
    assert dataset.options().autotune.enabled is False
    # keras_hub's fit maps and prefetches with AUTOTUNE on top; the option is
    # inherited, so its pipeline stays untuned too.
    mapped = dataset.map(lambda x, y: (x, y), num_parallel_calls=tf.data.AUTOTUNE)
    assert mapped.prefetch(tf.data.AUTOTUNE).options().autotune.enabled is False
    x, y = next(iter(mapped))
    np.testing.assert_array_equal(x["token_ids"][:, 1:], y[:, :-1])


def test_tokenizers(verdict_text):
    simple = SimpleTokenizer.from_text(verdict_text)
    dataset = create_dataset(
        "I HAD always thought Jack Gisburn",
        context_length=2,
        stride=1,
        batch_size=1,
        shuffle=False,
        tokenizer=simple,
    )
    x, y = next(iter(dataset))
    expected = simple.encode("I HAD always")
    assert x["token_ids"].numpy().tolist() == [expected[:2]]
    assert y.numpy().tolist() == [expected[1:]]
    # The default tokenizer keeps <|endoftext|> (documents' boundary) special.
    dataset = create_dataset(
        "Hi.<|endoftext|>Bye.",
        context_length=4,
        stride=1,
        batch_size=1,
        shuffle=False,
    )
    x, y = next(iter(dataset))
    assert x["token_ids"].numpy().tolist() == [
        [17250, 13, 50256, 3886]
    ]  # "Hi", ".", <|endoftext|>, "Bye"

    # Anything with `encode`, e.g. a tiktoken encoding.
    class Encoder:
        n_vocab = 10

        def encode(self, text):
            return [int(c) for c in text]

    dataset = create_dataset(
        "0123456789", context_length=3, stride=3, batch_size=2, tokenizer=Encoder()
    )
    assert int(dataset.cardinality()) == 1
    # The tokenizer's vocabulary size bounds the ids...
    Encoder.n_vocab = 5
    with pytest.raises(ValueError, match=r"\[0, 5\); found 9"):
        create_dataset(
            "0123456789", context_length=3, stride=3, batch_size=2, tokenizer=Encoder()
        )
    # ...unless overridden.
    dataset = create_dataset(
        "0123456789",
        context_length=3,
        stride=3,
        batch_size=2,
        tokenizer=Encoder(),
        vocabulary_size=10,
    )
    assert int(dataset.cardinality()) == 1
    with pytest.raises(TypeError, match="tokenize"):
        create_dataset("abc", context_length=1, stride=1, batch_size=1, tokenizer=3)


def test_accepts_id_tensors_and_lists():
    for ids in (list(range(20)), tf.range(20), np.arange(20, dtype=np.int64)):
        dataset = create_dataset(
            ids, context_length=4, stride=4, batch_size=2, shuffle=False
        )
        x, y = next(iter(dataset))
        assert x["token_ids"].numpy().tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
        assert y.dtype == tf.int32


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(context_length=0), "context_length=0"),
        (dict(context_length=-3), "context_length=-3"),
        (dict(context_length=2.5), "context_length"),
        (dict(stride=0), "stride=0"),
        (dict(stride=-1), "stride=-1"),
        (dict(stride=True), "stride"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(batch_size=17), "batch_size=17 is larger than the 16 windows"),
        (
            dict(context_length=20),
            r"has 20 tokens, but one window needs context_length \+ 1 = 21",
        ),
        (dict(vocabulary_size=15), r"\[0, 15\); found 19"),
    ],
)
def test_bad_arguments(kwargs, message):
    arguments = dict(context_length=4, stride=1, batch_size=2)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        create_dataset(np.arange(20), **arguments)


def test_bad_inputs():
    arguments = dict(context_length=4, stride=1, batch_size=1)
    with pytest.raises(ValueError, match="text is empty"):
        create_dataset("", **arguments)
    with pytest.raises(ValueError, match="context_length \\+ 1 = 5"):
        create_dataset("Hello, world", **arguments)
    with pytest.raises(ValueError, match="empty"):
        create_dataset([], **arguments)
    with pytest.raises(ValueError, match="non-negative"):
        create_dataset([1, 2, -3, 4, 5, 6], **arguments)
    with pytest.raises(ValueError, match="1-D"):
        create_dataset(np.zeros((2, 10), int), **arguments)
    with pytest.raises(ValueError, match="integers"):
        create_dataset(np.zeros(10), **arguments)
    with pytest.raises(ValueError, match="50257"):
        create_dataset(np.full(10, 50257), **arguments, vocabulary_size=50257)
    # A batch larger than the windows is fine without drop_remainder.
    dataset = create_dataset(
        np.arange(10), context_length=4, stride=1, batch_size=8, drop_remainder=False
    )
    assert next(iter(dataset))[1].shape == (6, 4)


def test_memory_stays_near_the_token_array(data_dir, tmp_path):
    # Tiny Shakespeare's train split at context 1024, stride 8: 37,618
    # windows, which would take 37,618 x 1,025 x 4 bytes ~ 154 MB (twice that
    # for inputs and targets) if materialised, against 1.2 MB of tokens. Run in
    # a fresh process so the peak RSS measures this dataset alone.
    script = textwrap.dedent(
        """
        import resource
        from keras_gpt_scratch.data import create_dataset, load_tiny_shakespeare
        from keras_gpt_scratch.data import num_windows
        from keras_gpt_scratch.tokenizers import GPTTokenizer

        def peak_mb():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        ids = GPTTokenizer()(load_tiny_shakespeare("train"))
        # Warm up tf.data so its own start-up memory is not counted.
        warm = create_dataset(ids[:5000], context_length=16, stride=8,
                              batch_size=4, seed=0)
        for _ in warm.take(3):
            pass
        before = peak_mb()
        dataset = create_dataset(ids, context_length=1024, stride=8,
                                 batch_size=8, seed=0)
        for _ in dataset.take(100):
            pass
        print(num_windows(len(ids), 1024, 8), int(dataset.cardinality()),
              peak_mb() - before)
        """
    )
    env = dict(os.environ, KERAS_GPT_SCRATCH_DATA=str(data_dir))
    env["KERAS_GPT_SCRATCH_CACHE"] = str(tmp_path / "cache")
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    windows, batches, growth_mb = result.stdout.split()[-3:]
    assert int(windows) == 37_618
    assert int(batches) == 37_618 // 8
    assert float(growth_mb) < 64, f"peak RSS grew by {growth_mb} MB"
