"""Dense head vs FlashHead under lm-evaluation-harness on the offline tasks (flashhead.data.lmeval_tasks):
the table in docs/FIDELITY.md ("lm-eval").

    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 python benchmarks/lmeval_table.py MODEL_DIR \\
        [--domains prose,german,code] [--limit 30]

Both rows run the `flashhead` lm-eval model on the same directory: `dense=True` (the dense head)
and the directory's default probes, with the same scoring code; the tasks are written to a
temporary directory from the suite's held-out (eval) text.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

METRICS = {"ppl": [("word_perplexity,none", "word ppl"), ("bits_per_byte,none", "bits/byte")],
           "lastword": [("acc,none", "last-word acc"), ("perplexity,none", "last-word ppl")],
           "choice": [("acc,none", "choice acc"), ("acc_norm,none", "choice acc_norm")]}


def main() -> None:
    import lm_eval

    import flashhead.integrations.lmeval  # noqa: F401  (registers the model)
    from flashhead.data.lmeval_tasks import write

    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("--domains", default="prose,german,code")
    p.add_argument("--limit", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args()
    torch.set_num_threads(2)
    domains = a.domains.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tasks = write(tmp, domains, docs=a.limit)
        names = [f"flashhead_{k}_{d}" for d in domains for k in METRICS]
        rows = {}
        for label, extra in (("dense", ",dense=True"), ("flashhead", "")):
            t = time.time()
            out = lm_eval.simple_evaluate(model="flashhead", model_args=f"pretrained={a.model_dir}{extra}",
                                          tasks=names, task_manager=lm_eval.tasks.TaskManager(include_path=str(tasks)),
                                          batch_size=a.batch_size, limit=a.limit, bootstrap_iters=0)
            rows[label] = (out["results"], out["config"]["model_args"], time.time() - t)
    print(f"model {a.model_dir}, {a.limit} texts per task; seconds: "
          + ", ".join(f"{k} {v[2]:.0f}" for k, v in rows.items()))
    print("| domain | metric | dense | FlashHead | difference |\n|---|---|---:|---:|---:|")
    for d in domains:
        for kind, metrics in METRICS.items():
            for key, name in metrics:
                x, y = (rows[k][0][f"flashhead_{kind}_{d}"][key] for k in ("dense", "flashhead"))
                print(f"| {d} | {name} | {x:.4f} | {y:.4f} | {y - x:+.4f} |")


if __name__ == "__main__":
    main()
