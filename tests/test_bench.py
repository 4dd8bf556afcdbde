"""`flashhead bench` in smoke mode: it runs end to end and reports consistent fields (no timing checks)."""
import json

import torch

from flashhead.tools.bench import bandwidth


def test_bench_smoke_json_and_plot(smollm2_flashhead_dir, tmp_path, capsys):
    from flashhead.cli.main import main

    png = tmp_path / "bench.png"
    assert not main(["bench", str(smollm2_flashhead_dir), "--smoke", "--json", "--plot", str(png)])
    out = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in out["head"]] == [1, 2]
    for r in out["head"]:
        assert r["dense_us"] > 0 and r["flashhead_us"] > 0
        assert abs(r["speedup"] - r["dense_us"] / r["flashhead_us"]) < 1e-9
        assert r["flashhead_mb"] < r["dense_mb"]
    assert [d["batch"] for d in out["decode"]] == [1, 2]        # the one generate loop, transformers
    for d in out["decode"]:
        assert d["new_tokens"] == 2 and d["dense_tok_s"] > 0 and d["flashhead_tok_s"] > 0
    assert out["machine"]["torch"] == torch.__version__ and out["machine"]["copy_bandwidth_gb_s"] > 0
    assert png.stat().st_size > 1000


def test_bench_rejects_cuda_without_gpu(smollm2_flashhead_dir):
    import pytest

    from flashhead.tools.bench import bench
    from flashhead.core.config import FlashHeadError

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(FlashHeadError, match="no CUDA"):
        bench(smollm2_flashhead_dir, device="cuda")


def test_bandwidth_is_measured():
    assert 0.1 < bandwidth("cpu", mbytes=8, repeats=2) < 10_000


def test_gpu_model_script_on_a_tiny_model(tmp_path):
    """benchmarks/gpu_model.py (the GPU session's model-level decode and fit, issue 15) runs end to
    end on the CPU with --tiny: the fit, a dense row and FlashHead rows at the fit's probes and at
    256, eager (no CUDA graph on the CPU). Its timings mean nothing here; the GPU run times."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "gpu-model.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_model.py"), "--tiny", "--tokens", "16",
                    "--batches", "1", "2", "--json", str(out)], check=True, cwd=root, capture_output=True)
    r = json.loads(out.read_text())
    assert r["fit"]["positions"] == 12288 and r["fit"]["held_out"] == 4096 and r["fit"]["probes"] >= 1
    rows = r["decode"]
    assert [x["batch"] for x in rows if x["head"] == "dense"] == [1, 2]
    flash = [x for x in rows if x["head"] == "flashhead"]
    assert {x["probes"] for x in flash} == {r["fit"]["probes"], 256} and len(flash) == 4
    for x in rows:
        assert x["mode"] == "eager" and x["steps"] == 8 and x["tokens_per_s"] > 0


def test_gpu_check_script_on_a_tiny_head():
    """benchmarks/gpu_check.py (verified decoding's check on a GPU, to run when one is at hand) runs
    end to end on the CPU with --tiny: one row per K, positive times."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--tiny", "--positions", "1,4",
                        "--repeats", "3"], check=True, capture_output=True, text=True)
    out = json.loads(r.stdout)
    assert [x["positions"] for x in out["rows"]] == [1, 4] and all(x["ms"] > 0 for x in out["rows"])
