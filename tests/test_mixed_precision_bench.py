"""tools/mixed_precision_bench.py end to end on a tiny geometry."""

import importlib.util
import json
import statistics
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "mixed_precision_bench",
    Path(__file__).parents[1] / "tools" / "mixed_precision_bench.py",
)
mp_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mp_bench)


def test_each_policy_is_timed_step_by_step_in_its_own_worker(tmp_path, capsys):
    out = tmp_path / "mp.json"
    tiny = "--vocab 64 --layers 1 --heads 2 --hidden 16 --context 8 --batch-size 2"
    args = [*tiny.split(), "--warmup", "1", "--steps", "3", "--rounds", "1"]
    assert mp_bench.main([*args, "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert list(results) == list(mp_bench.POLICIES)
    compute = {"float32": "float32", "mixed_bfloat16": "bfloat16"}
    compute["mixed_float16"] = "float16"
    for policy, runs in results.items():
        (run,) = runs
        assert run["policy"] == policy
        assert run["compute_dtype"] == compute[policy]
        assert run["variable_dtypes"] == ["float32"]
        assert run["finite"]
        # Three timed steps; the figures come from their median.
        assert len(run["step_seconds"]) == 3
        step = statistics.median(run["step_seconds"])
        assert run["seconds_per_step"] == step
        assert abs(run["tokens_per_s"] - 2 * 8 / step) < 1e-6 * run["tokens_per_s"]
    assert results["mixed_float16"][0]["optimizer"] == "LossScaleOptimizer"
    table = capsys.readouterr().out.splitlines()[-3:]
    assert [line.split()[0] for line in table] == list(mp_bench.POLICIES)
    assert table[0].split()[3] == "1.00x"
