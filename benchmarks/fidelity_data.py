"""Teacher-forced hidden states of a real model on real text, for the fidelity experiments.

    python benchmarks/fidelity_data.py smollm2-135m [--cal 24576 --eval 8192 --seq 256]

Text: Debian's `fortunes` package (/usr/share/games/fortunes, `apt-get install fortunes`; public
domain / freely redistributable quotations, see /usr/share/doc/fortunes/copyright). Entries are split
deterministically: every 3rd entry (after a seeded shuffle) is held-out "eval" text, the rest is
"cal" (calibration) text. Each split is tokenized as one stream and cut into sequences of --seq
tokens; the hidden state that enters lm_head (after the final norm) and the next token are saved:
    ~/.cache/flashhead/fidelity/<model>.safetensors: head [V, d], {cal,eval}_h [N, d], {cal,eval}_y [N]
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

FORTUNES = Path("/usr/share/games/fortunes")
SKIP = {"art", "ascii-art"}


def fortune_entries() -> list[str]:
    out = []
    for f in sorted(FORTUNES.iterdir()):
        if f.suffix or f.name in SKIP:
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        out += [e.strip() for e in text.split("\n%\n") if len(e.strip()) > 20]
    return out


def split_text(seed: int = 0) -> dict[str, str]:
    entries = fortune_entries()
    random.Random(seed).shuffle(entries)
    return {"eval": "\n\n".join(entries[0::3]), "cal": "\n\n".join(e for i, e in enumerate(entries) if i % 3)}


def out_path(model: str) -> Path:
    from flashhead.sources import cache_root
    return cache_root() / "fidelity" / f"{model}.safetensors"


@torch.inference_mode()
def collect(model, tok, text: str, positions: int, seq: int):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    n_seq = -(-positions // seq)
    captured = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: captured.append(i[0][0].float()))
    hs, ys = [], []
    for s in range(n_seq):
        chunk = ids[s * seq:(s + 1) * seq + 1]
        if len(chunk) < seq + 1:
            break
        x = torch.tensor([bos + chunk[:-1]])
        model(input_ids=x)
        hs.append(captured.pop()[len(bos):])
        ys.append(torch.tensor(chunk[1:]))
        print(f"\r{s + 1}/{n_seq}", end="", flush=True)
    hook.remove()
    print()
    return torch.cat(hs)[:positions].contiguous(), torch.cat(ys)[:positions].contiguous()


def main():
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from flashhead.sources import resolve

    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--cal", type=int, default=24576)
    p.add_argument("--eval", type=int, default=8192)
    p.add_argument("--seq", type=int, default=256)
    a = p.parse_args()
    torch.manual_seed(0)
    d = resolve(a.model)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    assert getattr(model.config, "final_logit_softcapping", None) in (None, 0), "soft-cap not handled"
    texts = split_text()
    out = {"head": model.lm_head.weight.detach().float().contiguous()}
    for split, n in (("eval", a.eval), ("cal", a.cal)):
        out[f"{split}_h"], out[f"{split}_y"] = collect(model, tok, texts[split], n, a.seq)
        print(split, tuple(out[f"{split}_h"].shape))
    path = out_path(a.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))
    print("wrote", path)


if __name__ == "__main__":
    main()
