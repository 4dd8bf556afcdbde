"""Model-level decode and the build's fit on a GPU: dense head vs FlashHead in a model of
Llama-3.2-1B's shape with random weights (speed only: random weights make fidelity meaningless).

    python benchmarks/gpu_model.py [--tokens 128] [--batches 1 8] [--json OUT]
    python benchmarks/gpu_model.py --tiny          # the same code on a tiny model, on the CPU
                                                   # (checks the script, times nothing useful)

1. fit: hidden states of the model's body on random token ids (16,384 positions: 12,288 to fit,
   4,096 held out, the build's default), then fit.fit_index(..., device="cuda") on them, timed:
   what `flashhead build --device cuda` runs after reading its calibration text (a random model
   has no tokenizer, so there is no text: the seconds of the body's forward passes are given
   apart). Asked: <= 60 s for the 128,256 x 2,048 head.
2. decode: greedy decode with a static KV cache (transformers' StaticCache), `--tokens` new tokens
   after a 32-token prompt, batch 1 and 8, the dense head against FlashHead (the dense rule off:
   FlashHead itself), at the build's probes and at 256. Each decode step (body + head + argmax)
   is captured once in a CUDA graph and replayed; where the capture fails the step runs eagerly
   and the row says so (`mode`). Tokens/s from CUDA events around the replays. Asked: >= 1.15x
   at batch 1 in bf16.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

PROMPT = 32


def config(tiny: bool):
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                           tie_word_embeddings=True)
    # Llama-3.2-1B's config.json (its shapes; rope scaling left out: it does not change the cost)
    return LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)


def model_of(cfg, device: str, dtype: torch.dtype):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    return model.to(dtype).eval()


@torch.inference_mode()
def calibration_states(model, positions: int, length: int = 256) -> torch.Tensor:
    """[positions, d] fp32 on the CPU: the body's output (the head's input) on random token ids."""
    g = torch.Generator(device=model.device).manual_seed(1)
    out = []
    for _ in range(-(-positions // (8 * length))):
        ids = torch.randint(model.config.vocab_size, (8, length), device=model.device, generator=g)
        out.append(model.model(input_ids=ids).last_hidden_state.flatten(0, 1).float().cpu())
    return torch.cat(out)[:positions]


def fit(model, device: str) -> tuple[object, dict]:
    from flashhead import FlashHeadConfig
    from flashhead.build import CALIBRATION_POSITIONS
    from flashhead.build.fit import fit_index

    t0 = time.perf_counter()
    h = calibration_states(model, CALIBRATION_POSITIONS)
    t1 = time.perf_counter()
    weight = model.lm_head.weight.detach().float().cpu()
    held = h.shape[0] // 4
    index = fit_index(weight, h[:-held], FlashHeadConfig(), device=device, held_out=h[-held:])
    t2 = time.perf_counter()
    return index, {"calibration_forward_s": round(t1 - t0, 1), "fit_s": round(t2 - t1, 1),
                   "fit_steps_s": index.build.get("seconds"), "probes": index.config.probes,
                   "positions": h.shape[0] - held, "held_out": held}


@torch.inference_mode()
def decode(model, batch: int, tokens: int, device: str) -> dict:
    """Tokens/s of greedy decode, batch `batch`, static cache; the step in a CUDA graph when it
    captures (mode "graph"), else eager (mode "eager", with the reason)."""
    from transformers import StaticCache

    from flashhead.tools.bench import _sync

    cache = StaticCache(config=model.config, max_cache_len=PROMPT + tokens + 8)
    ids = torch.randint(model.config.vocab_size, (batch, PROMPT), device=device,
                        generator=torch.Generator(device=device).manual_seed(2))
    out = model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(PROMPT, device=device),
                use_cache=True, logits_to_keep=1)
    tok = out.logits[:, -1].argmax(-1, keepdim=True)                           # [B, 1]
    pos = torch.full((1,), PROMPT, dtype=torch.int64, device=device)

    def step():
        o = model(input_ids=tok, past_key_values=cache, cache_position=pos, use_cache=True, logits_to_keep=1)
        tok.copy_(o.logits[:, -1].argmax(-1, keepdim=True))
        pos.add_(1)

    mode, why, run = "eager", None, step
    if device == "cuda":
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):                   # compiles every kernel outside the capture
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            mode, run = "graph", graph.replay
        except Exception as e:                       # said in the row, timed eagerly instead
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            torch.cuda.synchronize()
    steps = tokens - 8
    for _ in range(3):
        run()
    _sync(device)
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            run()
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1e3
    else:
        t = time.perf_counter()
        for _ in range(steps):
            run()
        seconds = time.perf_counter() - t
    return {"batch": batch, "steps": steps, "mode": mode, "capture_error": why,
            "step_ms": round(seconds / steps * 1e3, 3), "tokens_per_s": round(batch * steps / seconds, 1)}


def main() -> None:
    from flashhead.integrations import hf

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--probes", type=int, nargs="+", default=None, help="default: the fit's, and 256")
    ap.add_argument("--tiny", action="store_true", help="a tiny model on the CPU: checks the script")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    device = "cpu" if a.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny to check the script on the CPU")
    dtype = torch.float32 if a.tiny else torch.bfloat16
    model = model_of(config(a.tiny), device, dtype)
    index, built = fit(model, device)
    print("fit:", built, flush=True)
    rows = []
    for b in a.batches:
        r = decode(model, b, a.tokens, device)
        rows.append({"head": "dense", "probes": None, **r})
        print(rows[-1], flush=True)
    head = hf.apply(model, index)
    for p in a.probes or sorted({index.config.probes, min(256, index.num_clusters)}):
        for b in a.batches:
            with head.flashhead.flashhead_only(probes=p):
                r = decode(model, b, a.tokens, device)
            dense = next(x for x in rows if x["head"] == "dense" and x["batch"] == b)
            rows.append({"head": "flashhead", "probes": p, **r,
                         "speedup": round(r["tokens_per_s"] / dense["tokens_per_s"], 3)})
            print(rows[-1], flush=True)
    out = {"model": "random weights, Llama-3.2-1B shape" if not a.tiny else "tiny (script check)",
           "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
           "torch": torch.__version__, "dtype": str(dtype), "fit": built, "decode": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
