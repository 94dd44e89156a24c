"""The benchmark tool's arithmetic (the measurements themselves run in tools/)."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "bench", Path(__file__).parents[1] / "tools" / "bench.py"
)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_train_flops_per_token_counts_matmuls_and_attention():
    g = bench.GPT2_124M
    flops = bench._train_flops_per_token(g, 256)
    matmul_params = 12 * 12 * 768 * 768 + 50257 * 768
    assert flops == 6 * matmul_params + 12 * 12 * 768 * 256
    assert 7.5e8 < flops < 7.9e8  # ~6 x 124M (blocks + tied head) + attention


def test_summary_ratios_mfu_and_bandwidth_bound():
    results = {
        "limits": {
            "limits": [
                {
                    "tf_matmul_gflops": 100.0,
                    "numpy_matmul_gflops": 80.0,
                    "read_bandwidth_gbs": 10.0,
                    "peak_rss_mb": 1.0,
                }
            ]
        },
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
    def limits(tf_peak, numpy_peak, bandwidth):
        return {
            "tf_matmul_gflops": tf_peak,
            "numpy_matmul_gflops": numpy_peak,
            "matmul_peak_gflops": max(tf_peak, numpy_peak),
            "read_bandwidth_gbs": bandwidth,
            "peak_rss_mb": 1.0,
        }

    results = {
        # A slow round (a busy shared machine) must not pass for the limit.
        "limits": {"limits": [limits(100.0, 150.0, 10.0), limits(60.0, 70.0, 12.0)]},
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
