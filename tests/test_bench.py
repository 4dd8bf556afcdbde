"""`flashhead bench` in smoke mode: it runs end to end and reports consistent fields (no timing checks)."""
import json

import torch

from flashhead.bench import bandwidth


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
    d = out["decode"]
    assert d["new_tokens"] == 2 and d["dense_tok_s"] > 0 and d["flashhead_tok_s"] > 0
    assert out["machine"]["torch"] == torch.__version__ and out["machine"]["copy_bandwidth_gb_s"] > 0
    assert png.stat().st_size > 1000


def test_bench_rejects_cuda_without_gpu(smollm2_flashhead_dir):
    import pytest

    from flashhead.bench import bench
    from flashhead.config import FlashHeadError

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(FlashHeadError, match="no CUDA"):
        bench(smollm2_flashhead_dir, device="cuda")


def test_bandwidth_is_measured():
    assert 0.1 < bandwidth("cpu", mbytes=8, repeats=2) < 10_000
