import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gpt_scratch as kgs
from keras_gpt_scratch import training
from keras_gpt_scratch.cli import main as cli_main

MICRO = {
    "vocabulary_size": 50257,
    "num_layers": 1,
    "num_heads": 2,
    "hidden_dim": 32,
    "max_sequence_length": 64,
    "dropout": 0.0,
}


def micro_config(tmp_path, **kwargs):
    base = dict(
        model_config=MICRO,
        corpus="verdict",
        context_length=32,
        batch_size=4,
        steps=6,
        output_dir=str(tmp_path / "run"),
        sample_tokens=4,
        verbose=0,
    )
    return training.TrainConfig(**{**base, **kwargs})


def read_log(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_end_to_end_writes_checkpoints_log_and_plot(data_dir, tmp_path, capsys):
    result = training.train(micro_config(tmp_path))
    out = tmp_path / "run"
    for name in ("last", "best"):
        assert (out / name / "model.weights.h5").is_file()
        assert (out / name / "assets/tokenizer/gpt2.tiktoken").is_file()
        assert (out / f"{name}.keras").is_file()
    png = (out / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    rows = read_log(out / "log.csv")
    assert [r["epoch"] for r in rows] == ["0"]
    assert float(rows[0]["val_loss"]) == pytest.approx(result.val_loss, rel=1e-5)
    printed = capsys.readouterr().out
    assert "sample after epoch 1" in printed and "Every effort moves you" in printed
    assert printed.strip().splitlines()[-1].startswith("done: train loss")
    assert result.tokens_per_second > 0 and result.epochs_run == 1
    # The checkpoint is a working preset: its loss on the validation text
    # matches what fit() reported.
    lm = kgs.GPTCausalLM.from_preset(str(out / "last"))
    ev = training.evaluate(lm, corpus="verdict", split="validation", context_length=32)
    assert ev.loss == pytest.approx(result.val_loss, abs=0.02)


def test_loss_decreases_over_a_short_run(data_dir, tmp_path):
    cfg = micro_config(tmp_path, steps=None, epochs=3, learning_rate=3e-3)
    training.train(cfg)
    epochs = json.loads((tmp_path / "run/history.json").read_text())["epochs"]
    assert len(epochs) == 3
    assert epochs[-1]["loss"] < epochs[0]["loss"] - 0.5
    assert epochs[-1]["val_loss"] < 10.0  # from ~ln(50257) = 10.8


def test_schedule_warms_up_then_decays():
    cfg = training.TrainConfig(
        learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=10
    )
    lr = training.make_schedule(cfg, total_steps=110)
    opt = training.make_optimizer(cfg, total_steps=110)
    assert float(lr(0)) == pytest.approx(0.0)
    assert float(lr(5)) == pytest.approx(5e-4, rel=1e-3)
    assert float(lr(10)) == pytest.approx(1e-3, rel=1e-3)
    assert float(lr(110)) == pytest.approx(1e-4, rel=1e-3)
    assert opt.global_clipnorm == 1.0 and opt.weight_decay == pytest.approx(0.1)


def test_constant_schedule_and_no_clipping_for_the_book_recipe():
    cfg = training.TrainConfig(learning_rate=4e-4, lr_schedule="constant", clipnorm=0)
    opt = training.make_optimizer(cfg, total_steps=80)
    assert float(opt.learning_rate) == pytest.approx(4e-4)
    assert opt.global_clipnorm is None
    with pytest.raises(ValueError, match="Unknown lr_schedule"):
        training.make_optimizer(training.TrainConfig(lr_schedule="step"), 10)


def test_resume_after_sigkill_continues_epochs(data_dir, tmp_path):
    cfg_file = tmp_path / "micro.json"
    cfg_file.write_text(json.dumps(MICRO))
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "keras_gpt_scratch.cli",
        "train",
        "--config",
        str(cfg_file),
        "--corpus",
        "verdict",
        "--context-length",
        "32",
        "--stride",
        "8",
        "--batch-size",
        "4",
        "--epochs",
        "3",
        "--output-dir",
        str(out),
        "--sample-tokens",
        "0",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    log = out / "log.csv"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(read_log(log)) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)  # mid-epoch 2, no chance to clean up
    proc.wait()
    assert len(read_log(log)) == 1
    assert not (out / "summary.json").exists()

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "Resuming" in rerun.stdout
    assert [r["epoch"] for r in read_log(log)] == ["0", "1", "2"]
    history = json.loads((out / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 3


def test_evaluate_uniform_model_scores_log_vocabulary(data_dir):
    lm = kgs.GPTCausalLM.from_preset("gpt_tiny")
    for w in lm.backbone.weights:
        w.assign(np.zeros(w.shape, "float32"))  # all logits 0: uniform
    ev = training.evaluate(lm, corpus="verdict", split="validation", context_length=64)
    assert ev.loss == pytest.approx(math.log(50257), abs=1e-4)
    assert ev.perplexity == pytest.approx(50257, rel=1e-3)
    text = kgs.data.load_the_verdict()
    val = text[int(len(text) * 0.9) :]
    assert ev.nats_per_char == pytest.approx(ev.loss * ev.tokens / len(val), rel=1e-6)


def test_evaluate_cli_prints_json(data_dir, tmp_path, capsys):
    lm = kgs.GPTCausalLM(
        kgs.GPTBackbone(**MICRO),
        kgs.GPTCausalLMPreprocessor(kgs.GPTTokenizer(), sequence_length=64),
    )
    lm.save_to_preset(tmp_path / "p")
    code = cli_main(
        ["evaluate", "--preset", str(tmp_path / "p"), "--corpus", "verdict", "--json"]
    )
    assert code == 0
    got = json.loads(capsys.readouterr().out)
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]))


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"preset": "gpt_huge", "model_config": None}, "Known presets"),
        ({"corpus": "wikipedia"}, "Known corpora: tinyshakespeare, verdict"),
        ({"batch_size": 500}, "larger than the 144 training windows"),
        ({"context_length": 65}, "longer than the model's context length"),
        ({"batch_size": 0}, "batch_size must be positive"),
        ({"dtype_policy": "bfloat16"}, "Known policies: float32, mixed_bfloat16"),
    ],
)
def test_bad_settings_fail_before_training(data_dir, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        training.train(micro_config(tmp_path, **overrides))
    assert not (tmp_path / "run" / "log.csv").exists()


def test_output_dir_with_another_run_is_refused(data_dir, tmp_path):
    training.train(micro_config(tmp_path))
    with pytest.raises(FileExistsError, match="holds another run.*learning_rate"):
        training.train(micro_config(tmp_path, learning_rate=5e-3))
    with pytest.raises(FileExistsError, match="holds a finished run"):
        training.train(micro_config(tmp_path))
    training.train(micro_config(tmp_path, learning_rate=5e-3, overwrite=True))
    run = json.loads((tmp_path / "run/run.json").read_text())
    assert run["learning_rate"] == 5e-3


def test_run_recorded_before_a_setting_existed_still_resumes(data_dir, tmp_path):
    cfg = micro_config(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    # An older version's run.json: no dtype_policy, which it ran without.
    old = {k: v for k, v in cfg.identity().items() if k != "dtype_policy"}
    (out / "run.json").write_text(json.dumps(old))
    assert training.check_output_dir(cfg, out) is True
    # Unset means the global policy: float32 here, as if given.
    explicit = micro_config(tmp_path, dtype_policy="float32")
    assert training.check_output_dir(explicit, out) is True
    # train() checks inside the run's policy scope, as here.
    bf16 = micro_config(tmp_path, dtype_policy="mixed_bfloat16")
    with training.dtype_policy_scope("mixed_bfloat16"):
        with pytest.raises(FileExistsError, match="settings differ: dtype_policy"):
            training.check_output_dir(bf16, out)


def test_policy_scope_puts_back_the_previous_policy_after_an_error(data_dir, tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with pytest.raises(ValueError, match="batch_size 500 is larger"):
            training.train(
                micro_config(tmp_path, dtype_policy="float32", batch_size=500)
            )
        assert keras.config.dtype_policy().name == "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_run_trains_and_saves_float32_weights(
    data_dir, tmp_path, policy
):
    assert keras.config.dtype_policy().name == "float32"
    result = training.train(
        micro_config(tmp_path, dtype_policy=policy, steps=6, learning_rate=1e-2)
    )
    # The global policy is put back; the trained model keeps its own.
    assert keras.config.dtype_policy().name == "float32"
    lm = result.model
    compute = policy.removeprefix("mixed_")
    assert lm.backbone.transformer_layers[0].compute_dtype == compute
    assert {w.dtype for w in lm.weights} == {"float32"}
    # float16 trains through Keras' step with loss scaling (compile adds it).
    scaled = isinstance(lm.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")
    assert math.isfinite(result.train_loss) and math.isfinite(result.val_loss)
    assert result.val_loss < 10.5  # from ~ln(50257) = 10.8; 10.25 seen in both
    # The presets load in the loading process's policy, float32 here.
    loaded = kgs.GPTCausalLM.from_preset(str(tmp_path / "run/last"))
    assert loaded.backbone.transformer_layers[0].compute_dtype == "float32"
    for got, want in zip(loaded.weights, lm.weights, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    run = json.loads((tmp_path / "run/run.json").read_text())
    assert run["dtype_policy"] == policy


def test_cli_dtype_policy_flag_reaches_the_run(data_dir, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(training, "train", seen.append)
    assert cli_main(["train", "--dtype-policy", "mixed_bfloat16"]) == 0
    assert cli_main(["train"]) == 0
    assert [c.dtype_policy for c in seen] == ["mixed_bfloat16", None]


def test_cli_reports_bad_input_without_traceback(data_dir, tmp_path, capsys):
    code = cli_main(["train", "--corpus", "nope", "--output-dir", str(tmp_path / "r")])
    assert code == 2
    assert "Known corpora" in capsys.readouterr().err


def test_fine_tune_from_a_saved_preset(data_dir, tmp_path):
    keras.utils.set_random_seed(1)
    base = kgs.GPTCausalLM(
        kgs.GPTBackbone(**MICRO),
        kgs.GPTCausalLMPreprocessor(kgs.GPTTokenizer(), sequence_length=64),
    )
    base.save_to_preset(tmp_path / "base")
    cfg = micro_config(
        tmp_path, model_config=None, init_from=str(tmp_path / "base"), steps=2
    )
    result = training.train(cfg)
    before = training.evaluate(
        base, corpus="verdict", split="validation", context_length=32
    )
    # Starts from the saved weights, not from scratch: the first loss is the
    # base model's, and training only moves it a little in 2 steps.
    assert abs(result.val_loss - before.loss) < 0.5


def test_adamw_follows_pytorch_on_tiny_gradients():
    # The book trains with torch.optim.AdamW. Gradients of rarely seen
    # vocabulary rows are ~1e-6; Keras' epsilon placement shrinks their first
    # steps several-fold, which slowed the book's chapter-5 run.
    torch = pytest.importorskip("torch")
    grads = np.array([1e-6, -3e-6, 2e-5, 1e-3], "float32")
    start = np.array([0.5, -0.25, 1.0, 2.0], "float32")
    cfg = training.TrainConfig(lr_schedule="constant", learning_rate=4e-4)
    opt = training.make_optimizer(cfg, total_steps=10)
    var = keras.Variable(start, name="kernel")
    t_var = torch.nn.Parameter(torch.tensor(start))
    t_opt = torch.optim.AdamW([t_var], lr=4e-4, weight_decay=0.1)
    for step in range(1, 4):
        g = grads * step
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
        t_var.grad = torch.tensor(g)
        t_opt.step()
    moved, t_moved = var.numpy() - start, t_var.detach().numpy() - start
    assert isinstance(opt, kgs.TorchAdamW)
    np.testing.assert_allclose(moved, t_moved, rtol=1e-3)
    # Keras' own default would move the 1e-6 gradient's weight far less.
    keras_default = keras.optimizers.AdamW(learning_rate=4e-4, weight_decay=0.1)
    other = keras.Variable(start, name="kernel")
    keras_default.apply_gradients([(keras.ops.convert_to_tensor(grads), other)])
    assert abs(other.numpy()[0] - start[0]) < 0.5 * abs(t_moved[0])


def test_torch_adamw_fused_kernel_matches_the_op_by_op_update():
    # Dense gradients go through TensorFlow's fused Adam kernel; IndexedSlices
    # (a sparse embedding gradient) through Keras-style ops. The same update
    # to float32 rounding (the kernel takes 1 - beta_2 in float32).
    rng = np.random.default_rng(0)
    start = rng.normal(size=(6, 3)).astype("float32")
    # Rows of tiny gradients, where epsilon's placement shows.
    scales = np.array([1.0, 1e-2, 1e-4, 1e-6, 1e-7, 1.0], "float32")[:, None]
    grads = [rng.normal(size=(6, 3)).astype("float32") * scales for _ in range(4)]

    def run(sparse):
        opt = kgs.TorchAdamW(learning_rate=1e-2, weight_decay=0.1)
        var = keras.Variable(start, name="kernel")
        opt.build([var])

        @tf.function
        def apply(g):
            if sparse:
                g = tf.IndexedSlices(g, tf.range(6), tf.constant([6, 3]))
            opt.apply_gradients([(g, var)])

        for g in grads:
            apply(tf.constant(g))
        ops = apply.get_concrete_function(tf.constant(grads[0])).graph.get_operations()
        return var.numpy(), {op.type for op in ops}

    dense, dense_ops = run(sparse=False)
    sparse, sparse_ops = run(sparse=True)
    assert "ResourceApplyAdam" in dense_ops
    assert "ResourceApplyAdam" not in sparse_ops
    assert np.abs(dense - start).mean() > 1e-3
    np.testing.assert_allclose(dense, sparse, rtol=0, atol=1e-6)  # moves ~4e-2


def test_default_optimizer_trains_under_xla():
    # compile(jit_compile=True): the fused Adam kernel compiles with the step.
    ids = np.random.default_rng(0).integers(0, 50257, (4, 17)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((4, 16), "int32")}

    def fit(jit_compile):
        keras.utils.set_random_seed(0)
        lm = kgs.GPTCausalLM(kgs.GPTBackbone(**MICRO), preprocessor=None)
        lm.compile(jit_compile=jit_compile)
        assert lm.jit_compile is jit_compile  # Keras may turn XLA off quietly
        assert isinstance(lm.optimizer, kgs.TorchAdamW)
        start = [w.numpy() for w in lm.trainable_weights]
        lm.fit(x, ids[:, 1:], batch_size=2, epochs=1, verbose=0)
        return start, [w.numpy() for w in lm.trainable_weights]

    start, xla = fit(True)
    _, plain = fit(False)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(xla, start, strict=True))
    assert moved > 1e-4  # 2 steps at the default 4e-4
    # Adam normalizes each step, so a near-zero gradient whose rounding
    # differs under XLA can move by up to a step either way: allow that for
    # a few elements, and require the rest to agree.
    diff = np.concatenate(
        [np.abs(a - b).ravel() for a, b in zip(xla, plain, strict=True)]
    )
    assert diff.max() <= 2 * 2 * 4e-4
    assert np.mean(diff < 1e-5) > 0.99


def test_torch_adamw_round_trips_through_keras_serialization():
    opt = kgs.TorchAdamW(learning_rate=1e-3, weight_decay=0.05, global_clipnorm=1.0)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(restored) is kgs.TorchAdamW
    assert restored.epsilon == 1e-8 and restored.weight_decay == 0.05
    assert restored.global_clipnorm == 1.0
    with pytest.raises(ValueError, match="amsgrad"):
        kgs.TorchAdamW(amsgrad=True)
