"""The `flashhead` command on the real SmolLM2: JSON output for scripts, one-line errors."""
import json
import subprocess
import sys

import pytest

from flashhead.cli.main import main


def test_generate_json(smollm2_flashhead_dir, capsys):
    assert main(["generate", str(smollm2_flashhead_dir), "--prompt", "The capital of France is",
                 "--prompt", "Hello", "--max-new-tokens", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["head"] == "flashhead" and len(out["texts"]) == 2 and all(n <= 4 for n in out["new_tokens"])


@pytest.mark.parametrize("argv, message", [
    (["generate", "{dir}", "--prompt", "x", "--temperature", "-1"], "temperature >= 0"),
    (["generate", "{dir}", "--prompt", "x", "--probes", "0"], "probes must be an integer"),
    (["generate", "{dir}", "--prompt", ""], "a prompt is empty"),
    (["generate", "{dir}", "--prompt", "x", "--backend", "llamacpp"], "name the GGUF with --gguf"),
    (["generate", "{hf}", "--prompt", "x"], "not a FlashHead model directory"),
    (["generate", "{dir}", "--prompt", "x", "--audit", "4", "--exact"], "audits the fast mode"),
    (["generate", "{dir}", "--prompt", "x", "--context-probes", "-1"], "context_probes must be an integer"),
    (["eval", "{dir}", "--languages", "--domain", "code"], "--languages runs the languages check alone"),
    (["eval", "{dir}", "--context-probes", "0,36"], "--context-probes takes one budget"),
    (["eval", "{dir}", "--quantizations", "q8_0"], "add --backend llamacpp"),
    (["serve", "{dir}", "--max-sequences", "0"], "need --max-sequences >= 1"),
    (["serve", "{hf}"], "not a FlashHead model directory"),
    (["build", "no-such-model", "-o", "{tmp}/out"], "unknown model 'no-such-model'"),
    (["build", "{hf}", "-o", "{tmp}/out", "--probes", "100000"], "exceeds the number of clusters"),
    (["build", "{hf}", "-o", "{hf}"], "must differ"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, smollm2_flashhead_dir, smollm2_hf_dir, tmp_path, capsys):
    argv = [a.format(dir=smollm2_flashhead_dir, hf=smollm2_hf_dir, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith(f"flashhead {argv[0]}: error:")


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "flashhead.cli.main", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("build", "generate", "serve", "demo"):
        assert cmd in r.stdout


def test_build_json(smollm2_hf_dir, tmp_path, capsys):
    """`flashhead build --json` prints exactly one JSON object and writes a loadable directory."""
    from flashhead.core.index import ClusterIndex

    out = tmp_path / "fh"
    assert main(["build", str(smollm2_hf_dir), "-o", str(out), "--probes", "32", "--iterations", "1",
                 "--calibration-positions", "512", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["build"]["clusters"] == 3072 and stats["build"]["imbalance"] == 0
    assert ClusterIndex.load(out / "flash_head_assets").config.probes == 32
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["FlashHeadLlamaForCausalLM"] and config["flash_head_cache_dir"] == "flash_head_assets"


def test_bench_random_head_json(capsys):
    """`flashhead bench --random-head VxD --json`: a model-free head benchmark, one JSON object whose
    rows are measured (positive times, the FlashHead floor below the dense floor)."""
    assert main(["bench", "--random-head", "8192x64", "--batch", "1,4", "--repeats", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in result["head"]] == [1, 4]
    assert result["vocab"] == 8192 and result["hidden"] == 64
    for r in result["head"]:
        assert r["dense_us"] > 0 and r["flashhead_us"] > 0 and r["flashhead_floor_us"] < r["dense_floor_us"]
