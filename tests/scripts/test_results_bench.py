"""scripts/results_bench.py, scripts/gpu-check.sh and scripts/bench-cpu.sh, on the CPU: the report is written from a
measurement folder (numbers come from its files, missing steps say so); the script's arguments."""
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("results_bench", ROOT / "scripts" / "results_bench.py")
results_bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(results_bench)


def summary(median, spread=0.01):
    return {"median": median, "min": median, "max": median, "spread": spread, "n": 3}


BENCH = {
    "device": "cuda", "device_name": "NVIDIA H200", "torch": "2.13.0",
    "code": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False}, "model": {"segment_len": 2048},
    "train": {"micro_batch": 1, "segments": 16, "bptt_segments": 4, "dtype": "bf16", "compile": True},
    "plan": {"train_repeats": 50, "eval_histories": [2048, 1048576], "generate_histories": [2048, 1048576]},
    "train_tokens_per_s": {"none": summary(123456.0), "elastic": summary(111111.0)},
    "train_peak_bytes": {"none": 3 << 30, "elastic": 5 << 29},
    "mfu_none": 0.4321, "mfu_elastic": 0.3876, "mfu": 0.3876, "train_ratio_elastic_vs_none": 0.9012,
    "history_kinds": ["none", "elastic"],
    "eval_peak_bytes": {k: {"2048": 100 << 20, "1048576": 101 << 20} for k in ("none", "elastic")},
    "eval_s_per_token": {k: {"2048": summary(2e-6), "1048576": summary(2.1e-6)} for k in ("none", "elastic")},
    "generate_s_per_token": {k: {"2048": summary(3e-3), "1048576": summary(3.3e-3)} for k in ("none", "elastic")},
    "eval_memory_ratio_1M_vs_2k": 1.01, "generate_latency_ratio_1M_vs_2k": 1.1, "write_new_t_vs_seen_t": 1.02,
    "absorb_vs_matmul_floor": 1.7, "spread": {"generate_latency_ratio_1M_vs_2k": 0.05,
                                              "generate_latency_ratio_1M_vs_2k_elastic": 0.05},
    "eval_memory_ratio_1M_vs_2k_elastic": 1.01, "generate_latency_ratio_1M_vs_2k_elastic": 1.1,
    "state_floats": {"elastic": {"1048576": 8192, "2048": 8192}},
    "targets": {"train_ratio_elastic_vs_none": ">= 0.95", "eval_memory_ratio_1M_vs_2k": "<= 1.02",
                "generate_latency_ratio_1M_vs_2k": "<= 1.05", "write_new_t_vs_seen_t": "<= 1.5"},
}
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1"
skipped="0" tests="5"><testcase classname="tests.test_attention" name="test_a"/><testcase classname="tests.test_x"
name="test_b"><failure message="boom"/></testcase></testsuite></testsuites>"""


@pytest.fixture
def out(tmp_path):
    d = tmp_path / "gpu-check"
    d.mkdir()
    (d / "bench.json").write_text(json.dumps(BENCH))
    (d / "tests.xml").write_text(JUNIT)
    (d / "steps.jsonl").write_text('{"step": "tests", "rc": 1, "seconds": 41, "limit_s": 90}\n'
                                   '{"step": "bench", "rc": 0, "seconds": 250, "limit_s": 330}\n')
    (d / "commands.txt").write_text("python -m elastic_cli bench --recipe recipes/code-32k.yaml\n")
    return d


def test_report_numbers_come_from_the_files(out, tmp_path):
    dest = tmp_path / "docs" / "results-gpu.md"
    assert results_bench.main([str(out), "--out", str(dest)]) == 0
    text = dest.read_text()
    assert "NVIDIA H200, torch 2.13.0" in text
    assert "| tests | 1 | 41 | 90 |" in text and "| bench | 0 | 250 | 330 |" in text
    assert "4 passed, 1 failed, 0 skipped." in text and "`tests.test_x::test_b`" in text
    assert "| none | 123,456 | 0.010 | 3.00 | 0.432 |" in text
    assert "| elastic | 111,111 | 0.010 | 2.50 | 0.388 |" in text
    assert "| elastic | 100.0 | 101.0 | 0.002 | 0.002 | 3.000 | 3.300 |" in text
    assert "| `mfu` | 0.388 |  | >= 0.4 | MISSED |" in text
    assert "| `train_ratio_elastic_vs_none` | 0.901 |  | >= 0.9 | met |" in text  # the GPU bar
    assert "| `eval_memory_ratio_1M_vs_2k` | 1.010 |  | <= 1.02 | met |" in text
    assert "| `generate_latency_ratio_1M_vs_2k` | 1.100 | 0.050 | <= 1.05 | MISSED |" in text
    assert "recipes/code-32k.yaml" in text and not dest.with_name("results-gpu.md.tmp").exists()


def test_missing_measurements_are_reported_not_invented(out, tmp_path):
    (out / "bench.json").unlink()
    (out / "tests.xml").unlink()
    dest = tmp_path / "r.md"
    assert results_bench.main([str(out), "--out", str(dest)]) == 0
    text = dest.read_text()
    assert "Not measured (no tests.xml)." in text and "Not measured (no bench.json" in text
    assert "tokens/s" not in text


def test_missing_folder_is_a_usage_error(tmp_path, capsys):
    assert results_bench.main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_gpu_check_dry_run_lists_the_steps_within_8_minutes(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--dry-run"], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "o")}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    steps = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [s.split(",")[0][1:] for s in steps] == ["tests", "bench", "report"]
    limits = [int(s.split("at most ")[1].split(" s]")[0]) for s in steps]
    assert sum(limits) <= 8 * 60
    assert "-m gpu" in steps[0] and "--device cuda" in steps[1] and "train.compile=true" in steps[1]
    assert "recipes/code-32k.yaml" in steps[1] and "--kinds none,elastic" in steps[1] and "--train-steps 50" in steps[1]
    assert "--history 1048576" in steps[1] and "train.dtype=bf16" in steps[1]


def test_gpu_check_rejects_unknown_arguments():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--fast"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown argument --fast" in proc.stderr


def test_cpu_page_has_no_gpu_bars_or_tests_and_names_the_commit_the_bench_ran(out, tmp_path):
    bench = dict(BENCH, device="cpu", device_name="cpu", code={"commit": "fedcba9876543210" * 2 + "01234567", "dirty": True},
                 threads=1, host_malloc="kept (glibc mmap threshold 32 MiB, trim threshold 1 GiB)")
    (out / "bench.json").write_text(json.dumps(bench))
    (out / "tests.xml").unlink()
    (out / "steps.jsonl").write_text('{"step": "bench", "rc": 0, "seconds": 2500, "limit_s": 7200}\n')
    dest = tmp_path / "results-cpu.md"
    assert results_bench.main([str(out), "--out", str(dest), "--title", "CPU bench"]) == 0
    text = dest.read_text()
    assert text.startswith("# CPU bench") and "commit `fedcba987654` with uncommitted changes" in text
    assert "cpu, torch 2.13.0, 1 CPU thread, host memory kept (glibc mmap threshold 32 MiB, trim threshold 1 GiB), " \
        "commit" in text
    assert "GPU-marked tests" not in text and "`mfu`" not in text
    assert "| `train_ratio_elastic_vs_none` | 0.901 |  | >= 0.95 | MISSED |" in text  # the CPU bar, not the GPU one
    assert "| elastic | 1.010 | not measured | 1.100 (0.050) | 8,192 / 8,192 |" in text  # per kind, short then long
    assert "| none | not measured | not measured | not measured | not recorded |" in text


def test_bench_cpu_dry_run_lists_the_full_bench_and_the_report(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "bench-cpu.sh"), "--dry-run"], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "o")}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    steps = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [s.split(",")[0][1:] for s in steps] == ["bench", "report"]
    assert "recipes/tiny.yaml" in steps[0] and "--quick" not in steps[0] and "--kinds" not in steps[0]
    assert "--title CPU bench" in steps[1] and "docs/results-cpu.md" in steps[1]
    assert not (tmp_path / "o").exists()  # a dry run writes nothing (not even the folder of an earlier run)
