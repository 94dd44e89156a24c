"""RunBackup generations, the resume agreement and log truncation."""

import csv
import json

import keras
import numpy as np
import tensorflow as tf

import keras_gpt_scratch as kgs
from keras_gpt_scratch import training
from keras_gpt_scratch.backup import (
    WEIGHTS_FILE,
    RunBackup,
    agree_on_epoch,
    backed_up_epochs,
)

MICRO = {
    "vocabulary_size": 64,
    "num_layers": 1,
    "num_heads": 2,
    "hidden_dim": 16,
    "max_sequence_length": 8,
    "dropout": 0.0,
}


def micro_lm(seed):
    keras.utils.set_random_seed(seed)
    lm = kgs.GPTCausalLM(kgs.GPTBackbone(**MICRO), preprocessor=None)
    lm.compile(
        optimizer=keras.optimizers.AdamW(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    return lm


def data():
    ids = np.random.default_rng(0).integers(0, 64, (8, 9)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((8, 8), "int32")}
    return x, ids[:, 1:]


def test_generations_are_kept_two_at_a_time_and_removed_at_the_end(tmp_path):
    x, y = data()
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(backed_up_epochs(tmp_path / "b"))

    backup = RunBackup(tmp_path / "b")
    micro_lm(0).fit(
        x, y, batch_size=4, epochs=4, callbacks=[backup, Watch()], verbose=0
    )
    assert seen == [[1], [1, 2], [2, 3], [3, 4]]
    assert not (tmp_path / "b").exists()


def test_restoring_an_epoch_restores_weights_optimizer_and_epoch(tmp_path):
    x, y = data()
    lm = micro_lm(0)
    keep = RunBackup(tmp_path / "b", delete_on_success=False)
    lm.fit(x, y, batch_size=4, epochs=2, callbacks=[keep], verbose=0)
    assert backed_up_epochs(tmp_path / "b") == [1, 2]

    resumed = micro_lm(1)  # different initial weights
    epochs = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs.append(epoch)

    restore = RunBackup(tmp_path / "b", restore_epoch=2, delete_on_success=False)

    class Check(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            for a, b in zip(resumed.weights, lm.weights, strict=True):
                np.testing.assert_array_equal(a.numpy(), b.numpy())
            assert int(resumed.optimizer.iterations.numpy()) == 4

    resumed.fit(
        x, y, batch_size=4, epochs=3, callbacks=[restore, Check(), Record()], verbose=0
    )
    assert epochs == [2]


def test_restore_under_mixed_float16_brings_back_the_scaled_optimizer(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x, y = data()
        lm = micro_lm(0)
        assert isinstance(lm.optimizer, keras.optimizers.LossScaleOptimizer)
        keep = RunBackup(tmp_path / "b", delete_on_success=False)
        lm.fit(x, y, batch_size=4, epochs=1, callbacks=[keep], verbose=0)
        resumed = micro_lm(1)
        restored = []

        class Check(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                # The loss scale, its step counter and Adam's moments.
                want = lm.optimizer.variables
                got = resumed.optimizer.variables
                assert len(got) == len(want) > 3
                for a, b in zip(got, want, strict=True):
                    np.testing.assert_array_equal(a.numpy(), b.numpy())
                restored.append(True)

        restore = RunBackup(tmp_path / "b", restore_epoch=1)
        resumed.fit(
            x, y, batch_size=4, epochs=2, callbacks=[restore, Check()], verbose=0
        )
        assert restored == [True]
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_half_written_generations_are_ignored(tmp_path):
    (tmp_path / "epoch-1").mkdir()
    (tmp_path / "epoch-1" / WEIGHTS_FILE).write_bytes(b"x")
    (tmp_path / "epoch-2").mkdir()  # killed before the weights landed
    (tmp_path / ".epoch-3.tmp-0123").mkdir()
    (tmp_path / "notes").mkdir()
    assert backed_up_epochs(tmp_path) == [1]
    assert backed_up_epochs(tmp_path / "missing") == []


def test_agreement_without_other_workers_takes_the_newest():
    strategy = tf.distribute.get_strategy()
    assert agree_on_epoch([1, 2], 5, strategy) == 2
    assert agree_on_epoch([], 5, strategy) == 0
    assert agree_on_epoch([3, 9], 5, strategy) == 3  # beyond this run's epochs


def test_history_and_csv_log_are_cut_back_to_the_restored_epoch(tmp_path):
    history = training.LossHistory(tmp_path / "h.json", tokens_per_step=10, log_every=2)
    for epoch in range(3):
        for batch in range(4):
            history.on_train_batch_end(batch, {"loss": 5.0 - epoch})
        history.on_epoch_end(epoch, {"loss": 5.0 - epoch, "val_loss": 6.0 - epoch})
    history.truncate(2)
    assert [e["epoch"] for e in history.state["epochs"]] == [1, 2]
    assert history.state["step"] == 8
    assert max(p[0] for p in history.state["train"]) == 80
    assert [p[0] for p in history.state["validation"]] == [40, 80]

    log = tmp_path / "log.csv"
    with log.open("w", newline="") as f:
        csv.writer(f).writerows([["epoch", "loss"], ["0", "3"], ["1", "2"], ["2", "1"]])
    training.truncate_csv_log(log, 1)
    with log.open() as f:
        assert list(csv.reader(f)) == [["epoch", "loss"], ["0", "3"]]
    training.truncate_csv_log(tmp_path / "absent.csv", 1)  # nothing to cut
    assert json.loads(json.dumps(history.state)) == history.state
