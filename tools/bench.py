"""Benchmark keras-gpt-scratch against its peers, side by side, in one run.

Contenders: ours (`GPTCausalLM`), keras_hub's `GPT2CausalLM` with the same
geometry and random weights, and, when torch and transformers are installed,
transformers' `GPT2LMHeadModel`. Every measurement runs in a fresh worker
process (so peak memory is per case), and the contenders alternate within
each round (A B C, then C B A, ...) so that their ratios survive a noisy
machine. The machine's own limits are measured in the same run, once per
round at the start and again at the end, and the best measurement counts:
float32 matmul GFLOP/s (TensorFlow with oneDNN, and NumPy; MFU is over the
faster) and memory-read bandwidth.

    python tools/bench.py                       # everything, 2 rounds
    python tools/bench.py --cases generate --rounds 3
    python tools/bench.py --quick               # small step counts, a smoke test
    python tools/bench.py --json bench.json --markdown BENCHMARKS.md

Cases:
    limits      matmul GFLOP/s (TF + oneDNN, NumPy) and memory bandwidth
    products    the training cases' own matrix products (ours: forward and
                backward, two halves, the head's chunks), each timed alone
                between peak products: the MFU a step made of nothing else
                could reach
    train_124m  fit() tokens/s, GPT-2 124M geometry, batch 8, context 256
    train_tiny  fit() tokens/s, gpt_tiny geometry, batch 16, context 256
    generate    new tokens/s at batch 1 and 8 (124M, float32, 32-token
                prompt, 64 new tokens, greedy), first-call latency, and ours
                with int8 weights
    pipeline    tokens/s of the sliding-window tf.data loader (Tiny
                Shakespeare, context 1024, stride 8, batch 8)
    loss        forward + backward of the loss alone on 4,096 x 50,257
                logits: kgs.CrossEntropy against Keras'
                SparseCategoricalCrossentropy(from_logits=True)

Training uses the same optimizer (Keras AdamW) for every Keras contender, with
each model's own training step and default loss; tokens/s is batch tokens over
the median step time (the first, tracing step excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

RESULT_TAG = "BENCH_RESULT "
GPT2_124M = dict(vocab=50257, layers=12, heads=12, hidden=768, context=1024)
GPT_TINY = dict(vocab=50257, layers=4, heads=4, hidden=256, context=256)
# The training cases: geometry and batch; the context is TRAIN_CONTEXT.
TRAIN_SETUPS = {"train_124m": (GPT2_124M, 8), "train_tiny": (GPT_TINY, 16)}
TRAIN_CONTEXT = 256
CASES = (
    "limits",
    "products",
    "train_124m",
    "train_tiny",
    "generate",
    "pipeline",
    "loss",
)


# === Workers (each runs in its own process) ===


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train_flops_per_token(g: dict, context: int) -> float:
    """6 x matmul parameters + attention (PaLM's 12 L C T), per token."""
    c, layers = g["hidden"], g["layers"]
    matmul_params = layers * 12 * c * c + g["vocab"] * c  # blocks + tied head
    return 6 * matmul_params + 12 * layers * c * context


def worker_limits(quick: bool) -> dict:
    import numpy as np
    import tensorflow as tf

    import keras_gpt_scratch  # noqa: F401  (oneDNN on, TF backend)

    # Peaks: the best single product of several. This machine's speed
    # drifts by tens of percent within minutes (a shared VM), and a
    # slow stretch would otherwise pass for the limit and inflate MFU.
    n = 2048 if quick else 4096
    reps = 3 if quick else 8
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    product = tf.function(tf.matmul)  # one graph call: no eager dispatch

    def best_gflops(multiply) -> float:
        multiply()  # warm-up: oneDNN primitives, page faults
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            multiply()
            times.append(time.perf_counter() - t)
        return 2 * n**3 / min(times) / 1e9

    # CPU ops finish before returning; fetch one element, not a 64 MB copy.
    tf_gflops = best_gflops(lambda: product(a, b)[:1, :1].numpy())
    an, bn = a.numpy(), b.numpy()
    np_gflops = best_gflops(lambda: an @ bn)

    # Memory read: NumPy's sum uses one core, TensorFlow's all of them; the
    # bound is the faster (AMD EPYC: one core 24 GB/s, two about 31; Intel
    # Xeon VM: one core 8-9, two 17-28).
    big = np.ones(((128 if quick else 512) * 2**20) // 4, "float32")
    big.sum()
    t = time.perf_counter()
    for _ in range(5):
        big.sum()
    np_bandwidth = big.nbytes * 5 / (time.perf_counter() - t) / 1e9
    with tf.device("/CPU:0"):  # the CPU's memory, even beside a GPU
        big_tf = tf.constant(big)
        tf.reduce_sum(big_tf).numpy()
        t = time.perf_counter()
        for _ in range(5):
            tf.reduce_sum(big_tf).numpy()
    tf_bandwidth = big.nbytes * 5 / (time.perf_counter() - t) / 1e9
    return {
        "tf_matmul_gflops": tf_gflops,
        "numpy_matmul_gflops": np_gflops,
        "matmul_peak_gflops": max(tf_gflops, np_gflops),
        "numpy_read_bandwidth_gbs": np_bandwidth,
        "tf_read_bandwidth_gbs": tf_bandwidth,
        "read_bandwidth_gbs": max(np_bandwidth, tf_bandwidth),
        "peak_rss_mb": _peak_rss_mb(),
    }


def step_products(
    g: dict, batch: int, context: int, chains: int = 2, chunk_logits: int | None = None
) -> list[tuple]:
    """The matrix products of one of our training steps, as
    `(name, count, lhs_shape, rhs_shape, transpose_a, transpose_b)`.

    Our step runs the batch as `chains` independent halves
    (`GPTCausalLM.interleaved_halves`), which share a budget of `chunk_logits`
    logits (default `losses.HEAD_CHUNK_LOGITS`): each runs the tied head in chunks of
    at most `chunk_logits // chains` logits. Each `Linear` has a
    forward product, `dX = dY @ W.T` and `dW = X.T @ dY`; attention has two
    batched products forward and four backward (TF's gradients of
    `S = Q @ swapaxes(K)` and `O = A @ V`); the head has the logits,
    `d_hidden = G @ table` and `d_table = G.T @ h`. Their FLOPs add up to
    `_train_flops_per_token` x tokens (when the head's chunks divide evenly).
    """
    if chunk_logits is None:
        from keras_gpt_scratch.losses import HEAD_CHUNK_LOGITS as chunk_logits
    c, layers, heads, vocab = g["hidden"], g["layers"], g["heads"], g["vocab"]
    if batch % chains:
        raise ValueError(f"batch {batch} does not split into {chains} equal chains")
    rows = batch * context // chains
    n = layers * chains
    out = []
    for name, d_in, d_out, per_block in (
        ("qkv+out", c, c, 4),
        ("fc", c, 4 * c, 1),
        ("proj", 4 * c, c, 1),
    ):
        k = n * per_block
        out += [
            (f"{name} fwd", k, (rows, d_in), (d_in, d_out), False, False),
            (f"{name} dX", k, (rows, d_out), (d_in, d_out), False, True),
            (f"{name} dW", k, (rows, d_in), (rows, d_out), True, False),
        ]
    b, d = batch // chains, c // heads
    q, k_t, a = (
        (b, heads, context, d),
        (b, heads, d, context),
        (b, heads, context, context),
    )
    out += [  # S = Q @ swapaxes(K), O = A @ V, and TF's gradients of both
        ("attention S = Q K.T", n, q, k_t, False, False),
        ("attention O = A V", n, a, q, False, False),
        ("attention dQ = dS K", n, a, k_t, False, True),
        ("attention dK.T = Q.T dS", n, q, a, True, False),
        ("attention dA = dO V.T", n, q, q, False, True),
        ("attention dV = A.T dO", n, a, q, True, False),
    ]
    # The chains share the budget; each chunks as head_cross_entropy does.
    chunks = -(-rows // max(chunk_logits // chains // vocab, 1))
    chunk = -(-rows // chunks)
    k = chains * chunks
    out += [
        ("head logits", k, (chunk, c), (vocab, c), False, True),
        ("head d_hidden", k, (chunk, vocab), (vocab, c), False, False),
        ("head d_table", k, (chunk, vocab), (chunk, c), True, False),
    ]
    return out


def product_flops(lhs, rhs, transpose_a: bool, transpose_b: bool) -> int:
    """2 x m x k x n, times the batch dimensions of a batched product."""
    m, k = (lhs[-1], lhs[-2]) if transpose_a else (lhs[-2], lhs[-1])
    n = rhs[-2] if transpose_b else rhs[-1]
    batch = 1
    for dim in lhs[:-2]:
        batch *= dim
    return 2 * batch * m * k * n


def ceiling_fraction(products: list[tuple], fractions: list[float]) -> float:
    """The fraction of the peak a step of `products`, each running at its
    fraction of the peak one after another, reaches: its FLOPs over the sum
    of their times (a FLOP-weighted harmonic mean, not an arithmetic one)."""
    flops = [p[1] * product_flops(*p[2:]) for p in products]
    return sum(flops) / sum(
        f / fraction for f, fraction in zip(flops, fractions, strict=True)
    )


def product_ceiling(products: list[tuple], peak_size: int, pairs: int) -> dict:
    """Time each product alone, each time right after a `peak_size`-square
    product, and weigh them by FLOPs.

    The machine's speed drifts, so each product is compared with the peak
    product timed just before it: each product's median fraction of that
    peak goes into `ceiling_fraction`, the MFU (against that peak) of a step
    made of nothing but these products. `seconds` sums each product's median
    time times its count, for comparison with a measured step.
    """
    import tensorflow as tf

    def timed(run, *args, reps=1):
        t = time.perf_counter()
        for _ in range(reps):
            z = run(*args)
        # CPU ops finish before returning; fetch one element, not a copy.
        z[..., :1, :1].numpy()
        return (time.perf_counter() - t) / reps

    a = tf.random.normal((peak_size, peak_size))
    b = tf.random.normal((peak_size, peak_size))
    peak = tf.function(tf.matmul)  # one graph call: no eager dispatch
    timed(peak, a, b)
    peak_flops = 2 * peak_size**3
    rows, fractions, seconds = [], [], 0.0
    for name, count, lhs, rhs, ta, tb in products:
        x, y = tf.random.normal(lhs), tf.random.normal(rhs)
        run = tf.function(
            lambda x, y, ta=ta, tb=tb: tf.matmul(x, y, transpose_a=ta, transpose_b=tb),
            autograph=False,
        )
        timed(run, x, y)
        flops = product_flops(lhs, rhs, ta, tb)
        reps = max(2, int(peak_flops / 8 / flops))  # about 1/8 of a peak product
        ratios, times = [], []
        for _ in range(pairs):
            t_peak = timed(peak, a, b)
            times.append(timed(run, x, y, reps=reps))
            ratios.append((flops / times[-1]) / (peak_flops / t_peak))
        fractions.append(statistics.median(ratios))
        seconds += count * statistics.median(times)
        rows.append({"name": name, "count": count, "fraction_of_peak": fractions[-1]})
    return {
        "fraction_of_peak": ceiling_fraction(products, fractions),
        "seconds": seconds,
        "flops": sum(p[1] * product_flops(*p[2:]) for p in products),
        "products": rows,
    }


def worker_products(quick: bool) -> dict:
    import keras_gpt_scratch  # noqa: F401  (oneDNN on, TF backend)

    out = {}
    for which, (g, batch) in TRAIN_SETUPS.items():
        products = step_products(g, batch, TRAIN_CONTEXT)
        ceiling = product_ceiling(products, 2048 if quick else 4096, 2 if quick else 5)
        out[f"{which}_fraction_of_peak"] = ceiling["fraction_of_peak"]
        out[f"{which}_tokens_per_s"] = batch * TRAIN_CONTEXT / ceiling["seconds"]
        # The MFU numerator, as for training (any padding rows are not work).
        out[f"{which}_train_flops_per_token"] = _train_flops_per_token(g, TRAIN_CONTEXT)
        out[f"{which}_products"] = ceiling["products"]
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def fit_step_times(lm, ds, steps: int):
    """`lm.fit` for `steps` steps of `ds`: each step's seconds, and the history.

    Steps are timed one by one: fit() itself can take seconds to return
    after its last step (seen with both models), which is not training.
    """
    import keras

    times: list[float] = []

    class StepTimes(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.start)

    history = lm.fit(
        ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[StepTimes()]
    )
    return times, history


def train_lm(contender: str, g: dict):
    """The Keras contender ("ours" or "keras_hub") as the bench trains it:
    random weights, dropout 0, Keras AdamW, the model's own default loss."""
    import keras

    import keras_gpt_scratch as kgs

    keras.utils.set_random_seed(0)
    if contender == "ours":
        backbone = kgs.GPTBackbone(
            vocabulary_size=g["vocab"],
            num_layers=g["layers"],
            num_heads=g["heads"],
            hidden_dim=g["hidden"],
            max_sequence_length=g["context"],
            dropout=0.0,
        )
        lm = kgs.GPTCausalLM(backbone, preprocessor=None)
    else:
        import keras_hub

        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=g["vocab"],
            num_layers=g["layers"],
            num_heads=g["heads"],
            hidden_dim=g["hidden"],
            intermediate_dim=4 * g["hidden"],
            max_sequence_length=g["context"],
            dropout=0.0,
        )
        lm = keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)
    # The same optimizer for both; each model's own default loss ("auto":
    # ours is kgs.CrossEntropy, keras_hub's is SparseCategoricalCrossentropy).
    lm.compile(optimizer=keras.optimizers.AdamW(1e-4), loss="auto", weighted_metrics=[])
    return lm


def _keras_train(contender: str, g: dict, batch: int, context: int, steps: int):
    import numpy as np
    import tensorflow as tf

    lm = train_lm(contender, g)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, g["vocab"], (batch * 4, context + 1)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones_like(ids[:, :-1])}
    ds = tf.data.Dataset.from_tensor_slices((x, ids[:, 1:]))
    ds = ds.batch(batch, drop_remainder=True).repeat().prefetch(2)

    times, _ = fit_step_times(lm, ds, steps + 1)
    return batch * context / statistics.median(times[1:])  # step 1 traces


def _torch_train(g: dict, batch: int, context: int, steps: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = GPT2Config(
        vocab_size=g["vocab"],
        n_positions=g["context"],
        n_embd=g["hidden"],
        n_layer=g["layers"],
        n_head=g["heads"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, g["vocab"], (batch, context))

    def step():
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    step()
    times = [step() for _ in range(steps)]
    return batch * context / statistics.median(times)


def worker_train(contender: str, which: str, quick: bool) -> dict:
    g, batch = TRAIN_SETUPS[which]
    context = TRAIN_CONTEXT
    steps = (2 if quick else 5) if which == "train_124m" else (3 if quick else 12)
    if contender == "transformers":
        tps = _torch_train(g, batch, context, steps)
    else:
        tps = _keras_train(contender, g, batch, context, steps)
    return {
        "tokens_per_s": tps,
        "train_flops_per_token": _train_flops_per_token(g, context),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _keras_generate(contender: str, batch: int, new: int, prompt: int, rounds: int):
    import keras
    import numpy as np

    import keras_gpt_scratch as kgs

    keras.utils.set_random_seed(0)
    g = GPT2_124M
    if contender.startswith("ours"):
        lm = kgs.GPTCausalLM(
            kgs.GPTBackbone(
                vocabulary_size=g["vocab"],
                num_layers=g["layers"],
                num_heads=g["heads"],
                hidden_dim=g["hidden"],
                max_sequence_length=g["context"],
            ),
            preprocessor=None,
        )
        if contender == "ours_int8":
            lm.quantize("int8")
    else:
        import keras_hub

        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=g["vocab"],
            num_layers=g["layers"],
            num_heads=g["heads"],
            hidden_dim=g["hidden"],
            intermediate_dim=4 * g["hidden"],
            max_sequence_length=g["context"],
        )
        lm = keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)
    lm.compile(sampler="greedy")
    rng = np.random.default_rng(0)
    total = prompt + new
    ids = np.zeros((batch, total), "int32")
    ids[:, :prompt] = rng.integers(0, g["vocab"], (batch, prompt))
    mask = np.zeros((batch, total), bool)
    mask[:, :prompt] = True
    x = {"token_ids": ids, "padding_mask": mask}
    t = time.perf_counter()
    lm.generate(x, stop_token_ids=None)
    first = time.perf_counter() - t
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        lm.generate(x, stop_token_ids=None)
        times.append(time.perf_counter() - t)
    return batch * new / min(times), first


def _torch_generate(batch: int, new: int, prompt: int, rounds: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    ids = torch.randint(0, 50257, (batch, prompt))
    kwargs = dict(
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=50256,
        attention_mask=torch.ones_like(ids),
    )
    with torch.no_grad():
        t = time.perf_counter()
        model.generate(ids, **kwargs)
        first = time.perf_counter() - t
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            model.generate(ids, **kwargs)
            times.append(time.perf_counter() - t)
    return batch * new / min(times), first


def worker_generate(contender: str, batch: int, quick: bool) -> dict:
    new, prompt, rounds = (16 if quick else 64), 32, (1 if quick else 3)
    if contender == "transformers":
        tps, first = _torch_generate(batch, new, prompt, rounds)
    else:
        tps, first = _keras_generate(contender, batch, new, prompt, rounds)
    return {"tokens_per_s": tps, "first_call_s": first, "peak_rss_mb": _peak_rss_mb()}


def worker_loss(contender: str, quick: bool) -> dict:
    """Forward and backward of the loss alone, on gpt_tiny's 16 x 256 tokens."""
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_gpt_scratch as kgs

    n, vocab = (1024 if quick else 4096), GPT_TINY["vocab"]
    rng = np.random.default_rng(0)
    logits = tf.Variable(rng.normal(size=(n, vocab)).astype("float32"))
    labels = tf.constant(rng.integers(0, vocab, n).astype("int32"))
    loss_fn = (
        kgs.CrossEntropy()
        if contender == "ours"
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, logits)
        return loss, tape.gradient(loss, logits)

    step()
    times = []
    for _ in range(3 if quick else 10):
        t = time.perf_counter()
        step()[1].numpy()
        times.append(time.perf_counter() - t)
    return {
        "ms": 1e3 * statistics.median(times),
        "tokens": n,
        "peak_rss_mb": _peak_rss_mb(),
    }


def worker_pipeline(quick: bool) -> dict:
    import keras_gpt_scratch as kgs

    text = kgs.data.load_tiny_shakespeare("train")
    ids = kgs.GPTTokenizer().encode(text)
    rss_before = _peak_rss_mb()
    ds = kgs.data.create_dataset(
        ids, context_length=1024, stride=8, batch_size=8, shuffle=True, seed=0
    )
    it = iter(ds)
    next(it)
    n = 50 if quick else 400
    t = time.perf_counter()
    for _ in range(n):
        x, _ = next(it)
    tps = n * 8 * 1024 / (time.perf_counter() - t)
    return {
        "tokens_per_s": tps,
        "windows": kgs.data.num_windows(len(ids), 1024, 8),
        "token_array_mb": len(ids) * 4 / 2**20,
        "rss_growth_mb": _peak_rss_mb() - rss_before,
        "peak_rss_mb": _peak_rss_mb(),
    }


def run_worker(args) -> None:
    if args.worker == "limits":
        out = worker_limits(args.quick)
    elif args.worker == "products":
        out = worker_products(args.quick)
    elif args.worker.startswith("train"):
        out = worker_train(args.contender, args.worker, args.quick)
    elif args.worker.startswith("generate_b"):
        out = worker_generate(args.contender, int(args.worker[10:]), args.quick)
    elif args.worker == "pipeline":
        out = worker_pipeline(args.quick)
    elif args.worker == "loss":
        out = worker_loss(args.contender, args.quick)
    else:
        raise SystemExit(f"unknown worker case {args.worker}")
    print(RESULT_TAG + json.dumps(out), flush=True)


# === The parent: schedule, alternate, summarise ===


def have_torch() -> bool:
    try:
        import importlib.util

        return bool(
            importlib.util.find_spec("torch")
            and importlib.util.find_spec("transformers")
        )
    except ValueError:
        return False


def spawn(case: str, contender: str, quick: bool, timeout: int) -> dict:
    env = {
        **os.environ,
        "TF_ENABLE_ONEDNN_OPTS": "1",
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    cmd = [sys.executable, __file__, "--worker", case, "--contender", contender]
    if quick:
        cmd.append("--quick")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(
        f"worker {case}/{contender} failed (exit {proc.returncode}):\n"
        f"{proc.stderr[-3000:]}"
    )


def plan(cases, torch_ok: bool):
    peers = ["ours", "keras_hub"] + (["transformers"] if torch_ok else [])
    jobs = []
    for case in cases:
        if case in ("limits", "pipeline", "products"):
            jobs.append((case, [case]))
        elif case.startswith("train"):
            jobs.append((case, peers))
        elif case == "loss":
            jobs.append((case, ["ours", "keras"]))
        elif case == "generate":
            for b in (1, 8):
                jobs.append((f"generate_b{b}", ["ours", "ours_int8"] + peers[1:]))
    if "limits" in cases and len(jobs) > 1:
        jobs.append(("limits", ["limits"]))  # again at the end: the best counts
    return jobs


def median_of(results, key):
    values = [r[key] for r in results if key in r]
    return statistics.median(values) if values else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--markdown", help="write the table here (BENCHMARKS.md)")
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--contender", default="ours", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    torch_ok = have_torch() and not args.no_torch
    started = time.time()
    results: dict[str, dict[str, list]] = {}
    for case, contenders in plan(cases, torch_ok):
        rounds = 1 if case == "pipeline" else args.rounds
        for r in range(rounds):
            order = contenders if r % 2 == 0 else list(reversed(contenders))
            for contender in order:
                print(f"[bench] {case} / {contender} (round {r + 1})", flush=True)
                res = spawn(case, contender, args.quick, args.timeout)
                results.setdefault(case, {}).setdefault(contender, []).append(res)

    summary = summarise(results)
    table = render(summary)
    print(table)
    meta = {
        "command": "python tools/bench.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{_cpu_name()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "seconds": round(time.time() - started),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "summary": summary, "raw": results}, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(meta, table))
    return 0


def _cpu_name() -> str:
    """The CPU's model name (Linux), else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _mfu(row: dict, peak_gflops: float) -> float:
    """Training FLOPs per second over the matmul peak."""
    return row["tokens_per_s"] * row["train_flops_per_token"] / (peak_gflops * 1e9)


def summarise(results: dict) -> dict:
    out: dict = {}
    limits = results.get("limits", {}).get("limits")
    peak = bw = None
    if limits:
        # Limits are the best measurement; the contenders' figures medians.
        out["limits"] = {k: max(r[k] for r in limits) for k in limits[0]}
        out["limits"]["measurements"] = len(limits)
        lim = out["limits"]
        peak = lim.get("matmul_peak_gflops") or max(
            lim["tf_matmul_gflops"], lim["numpy_matmul_gflops"]
        )
        bw = lim["read_bandwidth_gbs"]
    if "products" in results:
        rounds = results["products"]["products"]
        out["products"] = {"rounds": len(rounds)}
        for which in TRAIN_SETUPS:
            if f"{which}_fraction_of_peak" not in rounds[0]:
                continue
            row = {
                k: median_of(rounds, f"{which}_{k}")
                for k in ("fraction_of_peak", "tokens_per_s", "train_flops_per_token")
            }
            if peak:
                row["mfu"] = _mfu(row, peak)
            names = [p["name"] for p in rounds[0][f"{which}_products"]]
            row["products"] = {
                name: statistics.median(
                    r[f"{which}_products"][i]["fraction_of_peak"] for r in rounds
                )
                for i, name in enumerate(names)
            }
            out["products"][which] = row
    for case, by in results.items():
        if case in ("limits", "products"):
            continue
        out[case] = {}
        for contender, rs in by.items():
            row = {k: median_of(rs, k) for k in rs[0]}
            if case.startswith("train") and peak:
                row["mfu"] = _mfu(row, peak)
            if case.startswith("generate") and bw:
                batch = int(case[10:])
                weight_bytes = 124_439_808 * (1 if contender == "ours_int8" else 4)
                bound = batch * bw * 1e9 / weight_bytes
                row["bandwidth_bound_tokens_per_s"] = bound
                row["fraction_of_bound"] = row["tokens_per_s"] / bound
            out[case][contender] = row
        alone = out.get("products", {}).get(case, {}).get("tokens_per_s")
        ours = out[case].get("ours")
        if alone and ours and "tokens_per_s" in ours:
            ours["of_products_alone"] = ours["tokens_per_s"] / alone
        base = out[case].get("keras_hub", {}).get("tokens_per_s")
        for row in out[case].values():
            if base and "tokens_per_s" in row:
                row["vs_keras_hub"] = row["tokens_per_s"] / base
    if "pipeline" in out and "train_124m" in out:
        ours = out["train_124m"].get("ours", {}).get("tokens_per_s")
        if ours:
            p = out["pipeline"]["pipeline"]
            p["vs_124m_training"] = p["tokens_per_s"] / ours
    return out


def _fmt(v, spec=",.1f"):
    return "" if v is None else format(v, spec)


def render(summary: dict) -> str:
    lines = []
    if "limits" in summary:
        lim = summary["limits"]
        lines.append(
            f"machine limits (best of {lim.get('measurements', 1)} measurements): "
            f"TF+oneDNN matmul {_fmt(lim['tf_matmul_gflops'])} GFLOP/s, "
            f"NumPy matmul {_fmt(lim['numpy_matmul_gflops'])} GFLOP/s, "
            f"memory read {_fmt(lim['read_bandwidth_gbs'])} GB/s"
            + (
                f" (TF sum {_fmt(lim['tf_read_bandwidth_gbs'])}, NumPy sum "
                f"{_fmt(lim['numpy_read_bandwidth_gbs'])} on one core)"
                if "tf_read_bandwidth_gbs" in lim
                else ""
            )
        )
    header = "| case | contender | tokens/s | vs keras_hub | first call s | peak RSS MB | MFU / of bound |"
    lines += ["", header, "|---|---|---|---|---|---|---|"]
    for case, rows in summary.items():
        if case in ("limits", "pipeline", "loss", "products"):
            continue
        for contender, row in rows.items():
            frac = row.get("mfu", row.get("fraction_of_bound"))
            lines.append(
                f"| {case} | {contender} | {_fmt(row.get('tokens_per_s'))} | "
                f"{_fmt(row.get('vs_keras_hub'), '.2f')} | {_fmt(row.get('first_call_s'), '.1f')} | "
                f"{_fmt(row.get('peak_rss_mb'), ',.0f')} | {_fmt(frac, '.0%')} |"
            )
    if "products" in summary:
        lines += ["", _render_products(summary)]
    if "loss" in summary:
        ours, keras_ = summary["loss"]["ours"], summary["loss"]["keras"]
        lines.append("")
        lines.append(
            f"loss, forward + backward over {int(ours['tokens']):,} x 50,257 logits: "
            f"kgs.CrossEntropy {_fmt(ours['ms'], ',.0f')} ms (peak RSS "
            f"{_fmt(ours['peak_rss_mb'], ',.0f')} MB), Keras "
            f"SparseCategoricalCrossentropy {_fmt(keras_['ms'], ',.0f')} ms "
            f"({_fmt(keras_['peak_rss_mb'], ',.0f')} MB): "
            f"{_fmt(keras_['ms'] / ours['ms'], '.2f')}x"
        )
    if "pipeline" in summary:
        p = summary["pipeline"]["pipeline"]
        lines.append("")
        lines.append(
            f"input pipeline: {_fmt(p['tokens_per_s'], ',.0f')} tokens/s over "
            f"{p['windows']:,} windows (context 1024, stride 8), RSS growth "
            f"{_fmt(p['rss_growth_mb'])} MB for a {_fmt(p['token_array_mb'])} MB token array"
            + (
                f"; {_fmt(p['vs_124m_training'], ',.0f')}x what 124M training consumes"
                if "vs_124m_training" in p
                else ""
            )
        )
    return "\n".join(lines)


def _render_products(summary: dict) -> str:
    prods = summary["products"]
    parts = []
    for which in TRAIN_SETUPS:
        row = prods.get(which)
        if not row:
            continue
        least = min(row["products"].items(), key=lambda kv: kv[1])
        mfu = f", {_fmt(row['mfu'], '.0%')} MFU" if "mfu" in row else ""
        ours = summary.get(which, {}).get("ours", {}).get("of_products_alone")
        parts.append(
            f"{which}: its products reach {_fmt(row['fraction_of_peak'], '.0%')} "
            "of the peak product timed beside each (least efficient: "
            f"{least[0]}, {_fmt(least[1], '.0%')}); "
            f"{_fmt(row['tokens_per_s'])} tokens/s one after another{mfu}"
            + (f"; ours trains at {_fmt(ours, '.0%')} of that" if ours else "")
        )
    return (
        "the training step's own matrix products, each timed alone (median of "
        f"{prods['rounds']} rounds): " + ". ".join(parts)
    )


def markdown(meta: dict, table: str) -> str:
    return (
        "# Benchmarks\n\n"
        f"Measured {meta['date']} on {meta['machine']} (Python {meta['python']}), "
        f"{meta['seconds']} s in all, with:\n\n```\n{meta['command']}\n```\n\n"
        "Each contender ran in its own process, alternating within rounds; the "
        "figures are medians over rounds. The machine's limits were measured "
        "once per round at the start and again at the end (best single "
        "4,096-square product; memory-read sums), and the best measurement "
        "is shown. MFU = tokens/s x (6 x matmul parameters "
        "+ 12 L C T) / the faster of the two float32 matmul peaks (TF+oneDNN, "
        "NumPy). "
        "The products line lists every matrix product of our training step "
        "(forward and backward, both halves, the head's chunks), times each "
        "alone right after a 4,096-square product, and gives the step's FLOPs "
        "over the time the products would take one after another, each at its "
        "median fraction of the peak product timed beside it (a FLOP-weighted "
        "harmonic mean): no step made of these products reaches a higher MFU "
        "against that peak unless they run faster in the step than alone. Its "
        "tokens/s is batch tokens over the sum of each product's median time "
        "times its count, and its MFU is over the same best peak as the "
        "table's (which is higher than the peak beside each product on this "
        "drifting machine). "
        "The generation bound is batch x bandwidth / weight bytes, with the "
        "faster of two memory-read measures (TF's sum on all cores, NumPy's on "
        "one). Training: "
        "Keras AdamW (1e-4) for both Keras models, each with its own training "
        "step (ours runs the optimizer's update as one XLA function and each "
        "batch as two interleaved halves) and default "
        "loss (ours: kgs.CrossEntropy; keras_hub: SparseCategoricalCrossentropy), "
        "dropout 0; tokens/s is batch tokens over the median step time, the "
        "first (tracing) step excluded.\n\n"
        f"{table}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
