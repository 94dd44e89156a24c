"""The benchmark tool's arithmetic (the measurements themselves run in tools/)."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "bench", Path(__file__).parents[1] / "tools" / "bench.py"
)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _limits(tf_peak, numpy_peak, bandwidth):
    """One `limits` worker's result."""
    return {
        "tf_matmul_gflops": tf_peak,
        "numpy_matmul_gflops": numpy_peak,
        "matmul_peak_gflops": max(tf_peak, numpy_peak),
        "read_bandwidth_gbs": bandwidth,
        "peak_rss_mb": 1.0,
    }


def test_train_flops_per_token_counts_matmuls_and_attention():
    g = bench.GPT2_124M
    flops = bench._train_flops_per_token(g, 256)
    matmul_params = 12 * 12 * 768 * 768 + 50257 * 768
    assert flops == 6 * matmul_params + 12 * 12 * 768 * 256
    assert 7.5e8 < flops < 7.9e8  # ~6 x 124M (blocks + tied head) + attention


def test_summary_ratios_mfu_and_bandwidth_bound():
    results = {
        "limits": {"limits": [_limits(100.0, 80.0, 10.0)]},
        "train_124m": {
            "ours": [
                {"tokens_per_s": 110.0, "train_flops_per_token": 7e8, "peak_rss_mb": 5},
                {"tokens_per_s": 130.0, "train_flops_per_token": 7e8, "peak_rss_mb": 7},
            ],
            "keras_hub": [
                {"tokens_per_s": 100.0, "train_flops_per_token": 7e8, "peak_rss_mb": 6}
            ],
        },
        "generate_b8": {
            "ours": [{"tokens_per_s": 80.0, "first_call_s": 3.0, "peak_rss_mb": 1}],
            "ours_int8": [
                {"tokens_per_s": 200.0, "first_call_s": 4.0, "peak_rss_mb": 1}
            ],
            "keras_hub": [
                {"tokens_per_s": 40.0, "first_call_s": 5.0, "peak_rss_mb": 1}
            ],
        },
        "pipeline": {
            "pipeline": [
                {
                    "tokens_per_s": 1e6,
                    "windows": 37618,
                    "token_array_mb": 1.2,
                    "rss_growth_mb": 3.0,
                    "peak_rss_mb": 9,
                }
            ]
        },
    }
    s = bench.summarise(results)
    ours = s["train_124m"]["ours"]
    assert ours["tokens_per_s"] == 120.0  # the median of the rounds
    assert ours["vs_keras_hub"] == pytest.approx(1.2)
    assert ours["mfu"] == pytest.approx(120 * 7e8 / 100e9)
    gen = s["generate_b8"]
    bound32 = 8 * 10e9 / (124_439_808 * 4)
    assert gen["ours"]["bandwidth_bound_tokens_per_s"] == pytest.approx(bound32)
    assert gen["ours_int8"]["bandwidth_bound_tokens_per_s"] == pytest.approx(
        4 * bound32
    )
    assert gen["ours"]["vs_keras_hub"] == pytest.approx(2.0)
    assert s["pipeline"]["pipeline"]["vs_124m_training"] == pytest.approx(1e6 / 120)
    table = bench.render(s)
    assert "| train_124m | ours | 120.0 | 1.20 |" in table
    assert "8,333x what 124M training consumes" in table


def test_plan_alternates_contenders_and_skips_torch_when_missing():
    jobs = dict(bench.plan(["train_tiny", "generate"], torch_ok=False))
    assert jobs["train_tiny"] == ["ours", "keras_hub"]
    assert jobs["generate_b1"] == ["ours", "ours_int8", "keras_hub"]
    jobs = dict(bench.plan(["train_tiny"], torch_ok=True))
    assert jobs["train_tiny"][-1] == "transformers"


def test_loss_case_is_reported_as_a_ratio_not_in_the_table():
    results = {
        "loss": {
            "ours": [{"ms": 150.0, "tokens": 4096, "peak_rss_mb": 2000.0}],
            "keras": [{"ms": 600.0, "tokens": 4096, "peak_rss_mb": 1900.0}],
        }
    }
    table = bench.render(bench.summarise(results))
    assert "| loss |" not in table
    assert "kgs.CrossEntropy 150 ms" in table
    assert "SparseCategoricalCrossentropy 600 ms" in table
    assert "4.00x" in table
    assert ("loss", ["ours", "keras"]) in bench.plan(["loss"], torch_ok=True)


def test_limits_take_the_faster_memory_read():
    lim = bench.worker_limits(quick=True)
    assert lim["numpy_read_bandwidth_gbs"] > 0 and lim["tf_read_bandwidth_gbs"] > 0
    assert lim["read_bandwidth_gbs"] == max(
        lim["numpy_read_bandwidth_gbs"], lim["tf_read_bandwidth_gbs"]
    )
    assert lim["matmul_peak_gflops"] == max(
        lim["tf_matmul_gflops"], lim["numpy_matmul_gflops"]
    )
    table = bench.render({"limits": lim})
    assert "(TF sum " in table and "on one core)" in table


def test_limits_are_the_best_round_and_mfu_is_over_the_faster_library():
    results = {
        # A slow round (a busy shared machine) must not pass for the limit.
        "limits": {"limits": [_limits(100.0, 150.0, 10.0), _limits(60.0, 70.0, 12.0)]},
        "train_tiny": {
            "ours": [{"tokens_per_s": 100.0, "train_flops_per_token": 1e9}],
        },
        "generate_b1": {"ours": [{"tokens_per_s": 20.0}]},
    }
    s = bench.summarise(results)
    assert s["limits"]["matmul_peak_gflops"] == 150.0
    assert s["limits"]["read_bandwidth_gbs"] == 12.0
    assert s["limits"]["measurements"] == 2
    assert s["train_tiny"]["ours"]["mfu"] == pytest.approx(100 * 1e9 / 150e9)
    bound = 12e9 / (124_439_808 * 4)
    assert s["generate_b1"]["ours"]["fraction_of_bound"] == pytest.approx(20 / bound)
    assert "machine limits (best of 2 measurements)" in bench.render(s)


def test_plan_measures_the_limits_at_both_ends():
    jobs = bench.plan(["limits", "train_tiny"], torch_ok=False)
    assert [case for case, _ in jobs] == ["limits", "train_tiny", "limits"]
    assert bench.plan(["limits"], torch_ok=False) == [("limits", ["limits"])]


@pytest.mark.parametrize("which", sorted(bench.TRAIN_SETUPS))
def test_step_products_add_up_to_the_mfu_numerator(which):
    g, batch = bench.TRAIN_SETUPS[which]
    products = bench.step_products(g, batch, bench.TRAIN_CONTEXT)
    flops = sum(count * bench.product_flops(*p) for _, count, *p in products)
    tokens = batch * bench.TRAIN_CONTEXT
    assert flops == bench._train_flops_per_token(g, bench.TRAIN_CONTEXT) * tokens
    head = {name: count for name, count, *_ in products if name.startswith("head")}
    # Two halves sharing 2**26 logits: 124M's 1,024-row halves take two
    # chunks of 512 rows, gpt_tiny's 2,048-row halves four.
    assert set(head.values()) == {4 if which == "train_124m" else 8}


def test_product_flops_follow_the_transposes():
    assert bench.product_flops((5, 3), (3, 7), False, False) == 2 * 5 * 3 * 7
    assert bench.product_flops((5, 7), (3, 7), False, True) == 2 * 5 * 7 * 3
    assert bench.product_flops((5, 3), (5, 7), True, False) == 2 * 3 * 5 * 7
    assert bench.product_flops((2, 4, 6, 8), (2, 4, 6, 8), False, True) == (
        2 * 2 * 4 * 6 * 8 * 6
    )


def test_product_ceiling_times_every_product_of_a_micro_step():
    g = dict(vocab=97, layers=1, heads=2, hidden=16, context=8)
    # 16 rows a half, at most 6 a chunk: 3 chunks of 6 rows, 2 of them padding.
    products = bench.step_products(g, 4, 8, chunk_logits=2 * 97 * 6 + 1)
    ceiling = bench.product_ceiling(products, peak_size=128, pairs=1)
    assert [r["name"] for r in ceiling["products"]] == [p[0] for p in products]
    assert all(r["fraction_of_peak"] > 0 for r in ceiling["products"])
    assert ceiling["seconds"] > 0
    head = [p for p in products if p[0].startswith("head")]
    assert {(count, p[0][0]) for _, count, *p in head} == {(6, 6)}
    padding = 3 * 2 * bench.product_flops((2, 97), (97, 16), False, False)
    assert ceiling["flops"] == bench._train_flops_per_token(g, 8) * 32 + padding
    fractions = [r["fraction_of_peak"] for r in ceiling["products"]]
    assert ceiling["fraction_of_peak"] == bench.ceiling_fraction(products, fractions)


def test_ceiling_is_flops_over_the_products_summed_times():
    one = ("a", 1, (4, 4), (4, 4), False, False)  # 128 FLOPs
    # Equal FLOPs at full and half speed take 1 + 2 time units: 2/3, not 3/4.
    assert bench.ceiling_fraction([one, one], [1.0, 0.5]) == pytest.approx(2 / 3)
    three = ("b", 3, (4, 4), (4, 4), False, False)  # counts weigh in
    assert bench.ceiling_fraction([one, three], [1.0, 0.5]) == pytest.approx(4 / 7)
    with pytest.raises(ValueError):
        bench.ceiling_fraction([one], [1.0, 0.5])


def test_step_products_need_equal_chains():
    with pytest.raises(ValueError, match="batch 3 does not split into 2"):
        bench.step_products(bench.GPT_TINY, 3, 8)


def test_products_summary_compares_ours_with_its_products_alone():
    def products_round(fraction, tps):
        return {
            "train_124m_fraction_of_peak": fraction,
            "train_124m_tokens_per_s": tps,
            "train_124m_train_flops_per_token": 7e8,
            "train_124m_products": [
                {"name": "fc fwd", "count": 24, "fraction_of_peak": fraction},
                {"name": "head logits", "count": 2, "fraction_of_peak": 0.5},
            ],
            "peak_rss_mb": 1.0,
        }

    results = {
        "limits": {"limits": [_limits(100.0, 80.0, 10.0)]},
        "products": {
            "products": [
                products_round(0.8, 120.0),
                products_round(0.9, 140.0),
                products_round(0.7, 100.0),
            ]
        },
        "train_124m": {
            "ours": [{"tokens_per_s": 90.0, "train_flops_per_token": 7e8}],
            "keras_hub": [{"tokens_per_s": 60.0, "train_flops_per_token": 7e8}],
        },
    }
    s = bench.summarise(results)
    row = s["products"]["train_124m"]
    assert row["fraction_of_peak"] == pytest.approx(0.8)
    assert row["mfu"] == pytest.approx(120 * 7e8 / 100e9)
    assert row["products"] == {"fc fwd": 0.8, "head logits": 0.5}
    assert s["train_124m"]["ours"]["of_products_alone"] == pytest.approx(0.75)
    assert "of_products_alone" not in s["train_124m"]["keras_hub"]
    table = bench.render(s)
    assert "| products |" not in table
    assert "train_124m: its products reach 80% of the peak product timed" in table
    assert "(least efficient: head logits, 50%); 120.0 tokens/s one after" in table
    assert "another, 84% MFU; ours trains at 75% of that" in table
    assert ("products", ["products"]) in bench.plan(["products"], torch_ok=True)


def _graph_products(graph, seen):
    """`(lhs, rhs, transpose_a, transpose_b)` of every MatMul and
    BatchMatMulV2 in `graph` and the functions it calls, each once (a while
    loop's body counts once)."""
    found = []
    for op in graph.get_operations():
        if op.type in ("MatMul", "BatchMatMulV2"):
            flags = ("transpose_a", "transpose_b")
            if op.type != "MatMul":
                flags = ("adj_x", "adj_y")
            shapes = [tuple(t.shape) for t in op.inputs[:2]]
            found.append((*shapes, *(op.get_attr(f) for f in flags)))
        for attr in op.node_def.attr.values():
            names = [attr.func.name] if attr.HasField("func") else []
            for name in names + [f.name for f in attr.list.func]:
                if name in seen:
                    continue
                seen.add(name)
                outer = graph
                while outer is not None and name not in outer._functions:
                    outer = getattr(outer, "outer_graph", None)
                assert outer is not None, f"function {name} not found"
                found += _graph_products(outer._functions[name].graph, seen)
    return found


def test_step_products_are_the_products_our_train_step_runs(monkeypatch):
    import collections

    import numpy as np
    import tensorflow as tf

    from keras_gpt_scratch.models import gpt_causal_lm

    g = dict(vocab=97, layers=2, heads=2, hidden=24, context=8)
    # Each half's 16 rows in two chunks of 8: the first runs before the
    # head's while loop and the second in its body, each once in the graph.
    monkeypatch.setattr(gpt_causal_lm, "HEAD_CHUNK_LOGITS", 2 * 8 * 97 + 1)
    lm = bench.train_lm("ours", g)
    lm.jit_compile = False  # Keras' "auto" on a CPU (the bench's machines)
    ids = np.zeros((4, 9), "int32")
    data = ({"token_ids": ids[:, :-1], "padding_mask": np.ones((4, 8), "int32")},)
    data += (ids[:, 1:],)
    lm.fit(*data, batch_size=4, epochs=1, shuffle=False, verbose=0)  # builds all
    graph = tf.function(lm.train_step).get_concrete_function(data).graph
    traced = collections.Counter(_graph_products(graph, set()))
    listed = collections.Counter()
    products = bench.step_products(g, 4, 8, chunk_logits=2 * 8 * 97 + 1)
    assert [p[1:3] for p in products if p[0] == "head logits"] == [(4, (8, 24))]
    for _, count, *product in products:
        listed[tuple(product)] += count
    assert traced == listed
