"""Training under real tf.distribute strategies on this machine (no mocks)."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

import keras_gpt_scratch as kgs
from keras_gpt_scratch import distribute, training

MICRO = {
    "vocabulary_size": 50257,
    "num_layers": 1,
    "num_heads": 2,
    "hidden_dim": 32,
    "max_sequence_length": 64,
    "dropout": 0.0,
}

MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import keras_gpt_scratch as kgs
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras, numpy as np
    from keras_gpt_scratch import distribute

    MICRO = json.loads(sys.argv[1])
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50257, (4, 17)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((4, 16), "int32")}

    def max_diff(weights_a, weights_b):
        return max(float(np.abs(a - b).max()) for a, b in zip(weights_a, weights_b))

    spreads = []

    def one_step(strategy, loss=None, optimizer=keras.optimizers.AdamW):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            lm = kgs.GPTCausalLM(kgs.GPTBackbone(**MICRO), preprocessor=None)
            lm.compile(
                optimizer=optimizer(1e-2),
                loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        ds = tf.data.Dataset.from_tensor_slices((x, ids[:, 1:])).batch(4)
        history = lm.fit(ds, epochs=1, verbose=0).history
        # Each replica's copy of each weight must have been updated alike.
        for w in lm.weights:
            copies = [c.numpy() for c in getattr(w.value, "values", (w.value,))]
            spreads.append(max_diff(copies, [copies[0]] * len(copies)))
        return history, [w.numpy() for w in lm.weights], strategy.num_replicas_in_sync

    h1, w1, n1 = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"))
    h2, w2, n2 = one_step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    # The default loss runs the fused head + loss step (GPTCausalLM.train_step).
    h3, w3, _ = one_step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), "auto")
    # TorchAdamW's fused kernel updates each replica's copy.
    _, w4, _ = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), None, kgs.TorchAdamW)
    _, w5, _ = one_step(
        tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), None, kgs.TorchAdamW
    )
    torch_diff, torch_moved = max_diff(w4, w5), max_diff(w4, w1)
    l1, l2 = h1["loss"][0], h2["loss"][0]
    diff, fused_diff = max_diff(w1, w2), max_diff(w1, w3)
    try:
        distribute.check_global_batch(5, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
        batch_error = None
    except ValueError as e:
        batch_error = str(e)
    print("RESULT", json.dumps({"loss1": l1, "loss2": l2, "replicas": [n1, n2],
                                "max_weight_diff": diff, "batch_error": batch_error,
                                "fused": h3, "keras": h1, "fused_weight_diff": fused_diff,
                                "torch_diff": torch_diff, "torch_moved": torch_moved,
                                "replica_spread": max(spreads)}))
    """
)


def run_script(script, *args, timeout=300):
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise AssertionError(proc.stdout[-2000:] + proc.stderr[-4000:])


def test_mirrored_over_two_cpus_matches_one_device():
    got = run_script(MIRRORED_SCRIPT, json.dumps(MICRO))
    assert got["replicas"] == [1, 2]
    assert got["loss1"] == pytest.approx(got["loss2"], rel=1e-5)
    assert got["max_weight_diff"] < 1e-5
    assert "not divisible by the 2 replicas" in got["batch_error"]
    # The fused head + loss step over two replicas, against Keras' on one.
    for name, value in got["keras"].items():
        assert got["fused"][name] == pytest.approx(value, rel=1e-5)
    assert got["fused_weight_diff"] < 1e-5
    # TorchAdamW: the same on two replicas, and not Keras AdamW's update.
    assert got["torch_diff"] < 1e-5
    assert got["torch_moved"] > 1e-4
    assert got["replica_spread"] == 0.0


def test_gradient_accumulation_equals_a_larger_batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50257, (4, 17)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((4, 16), "int32")}
    y = ids[:, 1:]

    def train(accumulate, batch):
        keras.utils.set_random_seed(0)
        lm = kgs.GPTCausalLM(kgs.GPTBackbone(**MICRO), preprocessor=None)
        lm.compile(
            optimizer=keras.optimizers.AdamW(
                1e-2, gradient_accumulation_steps=accumulate
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            weighted_metrics=[],
        )
        lm.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        return [w.numpy() for w in lm.weights]

    big = train(None, 4)
    accumulated = train(2, 2)
    for a, b in zip(big, accumulated, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)  # float32 summation order
    # And it differs from two plain steps of batch 2.
    plain = train(None, 2)
    assert max(np.abs(a - b).max() for a, b in zip(big, plain, strict=True)) > 1e-4


def test_unknown_strategy_and_bad_tf_config():
    with pytest.raises(ValueError, match="Known strategies: default, mirrored"):
        distribute.make_strategy("horovod")
    with pytest.raises(ValueError, match="not valid JSON"):
        distribute.parse_tf_config("{cluster: ")
    with pytest.raises(ValueError, match="needs 'cluster' and 'task'"):
        distribute.parse_tf_config('{"cluster": {}}')
    twice = {
        "cluster": {"worker": ["127.0.0.1:1234", "127.0.0.1:1234"]},
        "task": {"type": "worker", "index": 0},
    }
    with pytest.raises(ValueError, match=r"names 127.0.0.1:1234 twice"):
        distribute.parse_tf_config(json.dumps(twice))
    outside = {
        "cluster": {"worker": ["127.0.0.1:1"]},
        "task": {"type": "worker", "index": 3},
    }
    with pytest.raises(ValueError, match="not in its cluster"):
        distribute.parse_tf_config(json.dumps(outside))


def test_multi_worker_without_tf_config_is_refused(tmp_path, monkeypatch, data_dir):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    cfg = training.TrainConfig(
        model_config=MICRO,
        corpus="verdict",
        context_length=32,
        batch_size=4,
        steps=1,
        output_dir=str(tmp_path / "run"),
        strategy="multi-worker",
        verbose=0,
    )
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        training.train(cfg)
    assert not (tmp_path / "run").exists()


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_workers(tmp_path, extra, corpus="tinyshakespeare"):
    cfg = tmp_path / "micro.json"
    cfg.write_text(json.dumps(MICRO))
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    procs = []
    for i in range(2):
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
            ),
            "PYTHONUNBUFFERED": "1",
            "TMPDIR": str(scratch),  # where a non-chief keeps its scratch files
        }
        cmd = [
            sys.executable,
            "-m",
            "keras_gpt_scratch.cli",
            "train",
            "--strategy",
            "multi-worker",
            "--config",
            str(cfg),
            "--corpus",
            corpus,
            "--context-length",
            "32",
            "--batch-size",
            "4",
            "--output-dir",
            str(tmp_path / "run"),
            "--sample-tokens",
            "0",
            *extra,
        ]
        procs.append(
            subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


@pytest.mark.slow
def test_multi_worker_two_processes_train_and_chief_checkpoint_loads(
    tmp_path, data_dir
):
    procs = start_workers(tmp_path, ["--steps", "3"])
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    run = tmp_path / "run"
    assert (run / "summary.json").exists()
    lm = kgs.GPTCausalLM.from_preset(str(run / "last"))
    assert lm.backbone.hidden_dim == 32
    assert not any(p.name.startswith("keras-gpt-worker") for p in run.iterdir())
    assert not [p for p in (tmp_path / "tmp").iterdir() if "keras-gpt" in p.name]
    assert not (run / "backup").exists() and not (run / "backup-worker1").exists()


@pytest.mark.slow
def test_killing_a_worker_ends_the_run_with_a_clear_error(tmp_path, data_dir):
    procs = start_workers(
        tmp_path, ["--epochs", "1000", "--collective-timeout", "120"], corpus="verdict"
    )
    log = tmp_path / "run" / "log.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (
        log.exists() and list(csv.reader(log.open()))[1:]
    ):
        for p in procs:
            assert p.poll() is None, p.stdout.read()[-3000:]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    out = procs[0].communicate(timeout=240)[0]
    assert procs[0].returncode != 0
    assert "A worker of the distributed run stopped" in out, out[-3000:]


@pytest.mark.slow
def test_killed_multi_worker_run_resumes_with_the_same_command(tmp_path, data_dir):
    extra = ["--epochs", "4", "--collective-timeout", "120"]
    procs = start_workers(tmp_path, extra, corpus="verdict")
    run = tmp_path / "run"
    log = run / "log.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (
        log.exists() and len(list(csv.reader(log.open()))[1:]) >= 2
    ):
        for p in procs:
            assert p.poll() is None, p.stdout.read()[-3000:]
        time.sleep(0.1)
    for p in procs:  # the whole cluster goes down mid-run
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert 2 <= len(list(csv.reader(log.open()))[1:]) < 4
    # Make worker 1 lag: it keeps only epoch 1 while the chief may hold epoch
    # 2 and has logged it. Both must resume from epoch 1.
    lagging = run / "backup-worker1"
    assert (lagging / "epoch-1").is_dir() and (run / "backup" / "epoch-1").is_dir()
    for generation in lagging.iterdir():
        if generation.name != "epoch-1":
            shutil.rmtree(generation)
    procs = start_workers(tmp_path, extra, corpus="verdict")
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert "Resuming" in outs[0]
    epochs = [row[0] for row in list(csv.reader(log.open()))[1:]]
    assert epochs == ["0", "1", "2", "3"]
    history = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3, 4]
