"""`flashhead eval`: fidelity of FlashHead against the model's own dense head, on real text.

    hidden states once:   real text -> the model's body -> H [N, d] (the lm_head input), next tokens [N]
    per probe count P:    teacher-forced metrics on H (dense logits computed chunk by chunk),
                          plus free-running greedy generations compared token by token.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core import metrics
from ..core.config import FlashHeadError
from ..core.context import running, with_next
from ..core.head import FlashHead
from ..build.fit import dense_top1_rank, smallest_probes
from ..data.hidden import positions, teacher_forced
from ..kernels.step import pick
from ..core.rows import as_rows
from ..backends.transformers import TransformersBackend
from ..core.layout import load_assets
from ..data import chat, corpus, languages
from .generate import generate


def evaluate_hidden(head: FlashHead, weight: torch.Tensor, H: torch.Tensor, targets: torch.Tensor,
                    probes: list[int], chunk: int = 64, stop_ids: list[int] | None = None,
                    inputs: tuple | None = None) -> list[dict]:
    """Teacher-forced metrics per probe count from precomputed hidden states H [N, d] and next
    tokens [N] (hidden.teacher_forced): a sweep over probes reuses one forward pass of the model.
    `stop_ids` (the tokens that end a reply): how often FlashHead stops where the dense head
    stops (`stop_match`, over the positions where the dense greedy token is one of them) and
    where it does not (`false_stops`, a share of all positions). `inputs` (the token at each
    position [N], text starts [N] bool; teacher_forced(inputs=True)): each position's text so far
    is its context (context.py), which takes up to `head.context_probes` of the probes."""
    keys = ["agree", "contain1", "contain5", "tv1", "nll", "stop_hit", "stop_n", "false_stop"]
    sums = {p: dict.fromkeys(keys, 0.0) for p in probes}
    kld = {p: [] for p in probes}
    dp = {p: [] for p in probes}
    stops = torch.tensor(sorted(stop_ids or []), dtype=torch.int64)
    dense_nll = 0.0
    w = as_rows(weight)
    w = w if w.dtype == torch.float32 else as_rows(weight.float())   # fp32 products (Q8_0: llama.cpp's)
    use_context = inputs is not None and head.context_probes > 0
    carry = None
    with head.flashhead_only():              # measure FlashHead itself at every chunk size
        for s in range(0, H.shape[0], chunk):
            h, t = H[s:s + chunk], targets[s:s + chunk]
            ctx = None
            if use_context:
                held = running(head.assignments, head.num_clusters, inputs[0][s:s + chunk],
                               inputs[1][s:s + chunk], carry)
                carry = held[-1]
                ctx = with_next(held, inputs[0][s:s + chunk], head.successors).to(h.device)
            dense = w.dense(h.float())                                    # [n, V]
            dense_nll += float(metrics.nll(dense, t).sum())
            for p in probes:
                head.probes = p
                scores, tok, z = head.probe(h.to(weight.dtype), ctx)
                greedy = pick(tok, z)
                logits = head.fill_logits(h, scores, tok, z)       # = head(h), one step not two
                acc = sums[p]
                acc["agree"] += float(metrics.top1_agreement(greedy, dense).sum())
                acc["contain1"] += float(metrics.containment(tok, dense, 1).sum())
                acc["contain5"] += float(metrics.containment(tok, dense, 5).sum())
                acc["tv1"] += float(metrics.tv_distance(logits, dense, 1.0).sum())
                acc["nll"] += float(metrics.nll(logits, t).sum())
                kld[p].append(metrics.kl_divergence(dense, logits))
                dp[p].append(metrics.delta_p(dense, logits, t))
                if stops.numel():
                    d_stop, f_stop = torch.isin(dense.argmax(1), stops), torch.isin(greedy, stops)
                    acc["stop_n"] += float(d_stop.sum())
                    acc["stop_hit"] += float((d_stop & (greedy == dense.argmax(1))).sum())
                    acc["false_stop"] += float((f_stop & ~d_stop).sum())
    n = H.shape[0]
    rows = []
    for p in probes:
        acc = sums[p]
        extra = {} if not stops.numel() else {
            "stop_positions": int(acc["stop_n"]), "false_stops": acc["false_stop"] / n,
            "stop_match": acc["stop_hit"] / acc["stop_n"] if acc["stop_n"] else None}
        rows.append({"probes": p, "context_probes": head.context_probes if use_context else 0,
                     "next_clusters": 0 if not use_context or head.successors is None else head.successors.shape[1],
                     **extra,
                     "top1_agreement": acc["agree"] / n, "containment": acc["contain1"] / n,
                     "containment_top5": acc["contain5"] / n, "tv_distance": acc["tv1"] / n,
                     "ppl_dense": math.exp(dense_nll / n),
                     "ppl_flashhead": math.exp(acc["nll"] / n),
                     **metrics.distribution_stats(torch.cat(kld[p]), torch.cat(dp[p])),
                     **metrics.cost(head.vocab, head.hidden, head.num_clusters, head.cluster_size, p,
                                    head.config.quantization, weight.dtype),
                     # the same step of the model served in bf16 (as on a GPU): the ratio to quote
                     "bytes_fraction_bf16": metrics.cost(head.vocab, head.hidden, head.num_clusters,
                                                         head.cluster_size, p, head.config.quantization,
                                                         torch.bfloat16)["bytes_fraction"]})
    return rows


def evaluate_contexts(head: FlashHead, weight: torch.Tensor, H: torch.Tensor, targets: torch.Tensor,
                      inputs: tuple, contexts: list[int], stop_ids: list[int] | None = None,
                      done=None) -> list[dict]:
    """evaluate_hidden at the head's probes once per context budget in `contexts` (0: stage 1
    alone), on the same positions; the head's own budget is restored after. `done()` is called
    after each budget (a progress bar's update)."""
    saved, rows = head.context_probes, []
    try:
        for e in contexts:
            head.context_probes = e
            rows += evaluate_hidden(head, weight, H, targets, [head.probes], stop_ids=stop_ids, inputs=inputs)
            if done is not None:
                done()
    finally:
        head.context_probes = saved
    return rows


def suite_texts(model, tokenizer, domain: str, split: str = "eval") -> list[str]:
    """Texts of one split of a suite domain (corpus.py); `chat` is answered by `model` (chat.py)."""
    if domain == "chat":
        return chat.texts(model, tokenizer, split)
    return corpus.load(split, domain)


def _generation_match(model, tokenizer, prompts: list[str], probes: list[int], new_tokens: int) -> dict:
    """Mean identical greedy prefix of FlashHead's generations against the dense head's, per probe
    count (the one decode loop, tools/engine.py, on the transformers backend)."""
    backend = TransformersBackend(model, tokenizer, max_sequences=len(prompts))
    head = model.lm_head.flashhead
    dense = generate(backend, None, prompts, max_new_tokens=new_tokens, mode="dense")["token_ids"]
    out = {}
    for p in probes:                         # FlashHead at every probe count, not the dense rule
        with head.flashhead_only(p):
            flash = generate(backend, head, prompts, max_new_tokens=new_tokens)["token_ids"]
        out[p] = sum(metrics.common_prefix(a, b) for a, b in zip(dense, flash)) / len(prompts)
    return out


def evaluate(model, tokenizer, texts: list[str], probes: list[int] | None = None, max_positions: int = 4096,
             prompts: int = 8, new_tokens: int = 32, target_agreement: float | None = None,
             stop_ids: list[int] | None = None) -> dict:
    """Fidelity of the model's FlashHead vs its dense head. `model` has a FlashHeadLMHead (hf.load)."""
    lm = model.lm_head
    head = lm.flashhead
    probes = sorted(set(probes or [head.probes]))
    for p in probes:
        if not 1 <= p <= head.num_clusters:
            raise FlashHeadError(f"probes must lie in [1, {head.num_clusters}], got {p}")
    H, targets, x, first = teacher_forced(model, tokenizer, texts, max_positions, inputs=True)
    rows = evaluate_hidden(head, lm.weight.detach(), H, targets, probes, stop_ids=stop_ids, inputs=(x, first))
    if prompts > 0:
        starts = [" ".join(t.split()[:8]) for t in texts[:prompts]]
        match = _generation_match(model, tokenizer, starts, probes, new_tokens)
        for r in rows:
            r["generation_match"] = match[r["probes"]]
            r["generation_tokens"] = new_tokens
    out = {"model": getattr(model.config, "_name_or_path", ""), "vocab": head.vocab, "hidden": head.hidden,
           "clusters": head.num_clusters, "cluster_size": head.cluster_size,
           "quantization": head.config.quantization, "dtype": str(lm.weight.dtype).replace("torch.", ""),
           "positions": int(H.shape[0]), "positions_asked": max_positions, "prompts": prompts,
           "exact_tokens": head.exact_ids.numel(),
           "results": rows}
    if target_agreement is not None:
        out["target_agreement"] = target_agreement
        out["smallest_probes"] = smallest_probes(dense_top1_rank(head, H, lm.weight.detach()), target_agreement)
    return out


def evaluate_suite(model, tokenizer, domains: list[str] | None = None, probes: list[int] | None = None,
                   max_positions: int = 3072, prompts: int = 4, new_tokens: int = 32,
                   progress: bool = False) -> dict:
    """`evaluate` on the eval documents of every suite domain (corpus.SUITE), with the worst domain
    per metric. A domain the build calibrated on is marked `in_domain` (its numbers are then
    in-domain: another split of the same corpus); the worst is taken over the other domains."""
    head = model.lm_head.flashhead
    cal = head.build.get("calibration") or {}
    seen = set(cal.get("sources") or [])
    out = {"model": getattr(model.config, "_name_or_path", ""), "calibration": cal.get("text"), "domains": {}}
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if domains and "chat" in domains and not has_chat:
        raise FlashHeadError("the chat domain needs a model with a chat template; this tokenizer has none")
    out["skipped"] = [] if has_chat or domains else ["chat (no chat template: a base model)"]
    names = domains or [d for d in corpus.SUITE if d != "chat" or has_chat]
    for d in tqdm(names, desc="eval", unit="domain", disable=not progress):   # on stderr
        stop = chat.control_token_ids(tokenizer) if d == "chat" else None
        r = evaluate(model, tokenizer, suite_texts(model, tokenizer, d, "eval"), probes, max_positions,
                     prompts, new_tokens, stop_ids=stop)
        r["in_domain"] = d in seen
        out["domains"][d] = r
    out["worst"] = worst_domains(out["domains"])
    return out


def backend_tokens(backend, texts: list[str], max_positions: int) -> list[list[int]]:
    """The token ids a backend scores teacher-forced: text by text, each within the backend's
    context, max_positions positions (a position: a token and the one after it) in all."""
    out, n = [], 0
    for text in texts:
        ids = backend.tokenize(text)[: backend.n_ctx][: max_positions - n + 1]
        if len(ids) < 2:
            continue
        out.append(ids)
        n += len(ids) - 1
        if n >= max_positions:
            break
    if not out:
        raise FlashHeadError("no text with two or more tokens")
    return out


def backend_hidden(backend, texts: list[str], max_positions: int, inputs: bool = False):
    """Teacher-forced hidden states [N, d] and next tokens [N] from a Backend over
    backend_tokens' ids; `inputs`: hidden.positions."""
    return hidden_of(backend, backend_tokens(backend, texts, max_positions), inputs)


def hidden_of(backend, lists: list[list[int]], inputs: bool = False):
    """hidden.positions over the backend's hidden states of each token list (backend_tokens)."""
    return positions([backend.hidden_states(ids)[:-1] for ids in lists], [torch.tensor(i) for i in lists],
                     sum(len(i) - 1 for i in lists), inputs)


def quantization_rows(backend, lists: list[list[int]], H: torch.Tensor, targets: torch.Tensor, kinds: list[str],
                      chunk: int = 64) -> list[dict]:
    """llama.cpp's own quantizations of the backend's GGUF (backends/llamacpp_quantize.py) against
    the backend's dense head, teacher-forced on the token ids `lists`: the same metrics as
    evaluate_hidden's (KL divergence, Δp, same-top-1, perplexity), each kind's own head (its
    rows dequantized) on its own hidden states."""
    from ..backends.llamacpp import LlamaCppBackend
    from ..backends.llamacpp_quantize import quantize

    paths = [quantize(backend.path, kind, backend.threads) for kind in kinds]
    Hq = []
    for path in paths:                     # each kind's hidden states, one model open at a time
        q = LlamaCppBackend(path, n_ctx=backend.n_ctx, threads=backend.threads, max_sequences=1)
        try:                               # its rows outlive the backend (a memory map or a copy)
            Hq.append((torch.cat([q.hidden_states(ids)[:-1] for ids in lists]), q.head_weight()))
        finally:
            q.close()
    acc = [{"kld": [], "dp": [], "agree": 0, "nll": 0.0} for _ in kinds]
    nll_d = 0.0
    for s in range(0, H.shape[0], chunk):
        d, t = backend.dense_logits(H[s:s + chunk]), targets[s:s + chunk]   # the reference, once per chunk
        nll_d += float(metrics.nll(d, t).sum())
        for a, (hq, rows_q) in zip(acc, Hq):
            x = as_rows(rows_q).dense(hq[s:s + chunk].float())
            a["kld"].append(metrics.kl_divergence(d, x))
            a["dp"].append(metrics.delta_p(d, x, t))
            a["agree"] += int((d.argmax(1) == x.argmax(1)).sum())
            a["nll"] += float(metrics.nll(x, t).sum())
    n = H.shape[0]
    rows = [{"quantization": kind.upper(), "file_bytes": path.stat().st_size, "top1_agreement": a["agree"] / n,
             "ppl_dense": math.exp(nll_d / n), "ppl_quantized": math.exp(a["nll"] / n),
             **metrics.distribution_stats(torch.cat(a["kld"]), torch.cat(a["dp"]))}
            for kind, path, a in zip(kinds, paths, acc)]
    return rows


def evaluate_backend(model, domains: list[str] | None = None, probes: list[int] | None = None,
                     max_positions: int = 3072, progress: bool = False, quantizations: list[str] | None = None) -> dict:
    """Teacher-forced fidelity per suite domain on any backend (a tools.model.Model): hidden states
    from its body, against its own dense head (llama.cpp: the products llama.cpp computes on the
    GGUF's Q8_0 rows). The chat domain needs the transformers model to answer its questions
    (chat.py): `flashhead eval` without --backend measures it. `quantizations` (llama.cpp only,
    e.g. ["q8_0", "q4_k_m"]): llama.cpp's own quantizations of the GGUF on the same positions, in
    the same units, beside FlashHead (quantization_rows)."""
    backend, head = model.backend, model.head
    probes = sorted(set(probes or [head.probes]))
    seen = set((head.build.get("calibration") or {}).get("sources") or [])
    out = {"backend": backend.name, "vocab": backend.vocab, "hidden": backend.hidden,
           "clusters": head.num_clusters, "cluster_size": head.cluster_size,
           "skipped": [] if domains else ["chat (answered by the transformers model: flashhead eval without "
                                          "--backend)"], "domains": {}}
    if backend.name == "llamacpp":
        out["gguf"] = str(backend.path)
    elif quantizations:
        raise FlashHeadError("llama.cpp's quantizations are measured on the llama.cpp backend (--backend llamacpp)")
    for d in tqdm(domains or [d for d in corpus.SUITE if d != "chat"], desc=f"eval ({backend.name})", unit="domain",
                  disable=not progress):
        if d == "chat":
            raise FlashHeadError("the chat domain is measured with `flashhead eval` on transformers only")
        lists = backend_tokens(backend, corpus.load("eval", d), max_positions)
        H, targets, x, first = hidden_of(backend, lists, inputs=True)
        rows = evaluate_hidden(head, head.weight, H, targets, probes, inputs=(x, first))
        out["domains"][d] = {"positions": int(H.shape[0]), "in_domain": d in seen, "results": rows}
        if quantizations:
            out["domains"][d]["quantizations"] = quantization_rows(backend, lists, H, targets, quantizations)
    out["worst"] = worst_domains(out["domains"])
    return out


def evaluate_languages(model, tokenizer, langs: list[str] | None = None, contexts: list[int] | None = None,
                       max_positions: int = 1536, max_length: int = 512, progress: bool = False) -> dict:
    """The languages check (languages.py): teacher-forced fidelity per language at the model's
    probes, once per context budget in `contexts` (0: stage 1 alone; E: up to E of the P probes go
    to the clusters of the text so far, context.py), texts of up to `max_length` tokens. Every
    language is held out (no build calibrates on it)."""
    head = model.lm_head.flashhead
    contexts = sorted(set(contexts if contexts is not None else [0, head.context_probes]))
    for e in contexts:
        if not 0 <= e <= head.probes:
            raise FlashHeadError(f"a context budget lies in [0, probes = {head.probes}], got {e}")
    out = {"probes": head.probes, "contexts": contexts, "max_length": max_length, "languages": {}}
    names = langs or list(languages.LANGUAGES)
    with tqdm(total=len(names) * (1 + len(contexts)), desc="languages check", unit="pass", disable=not progress) as bar:
        for lang in names:
            bar.set_postfix_str(lang)
            H, y, x, first = teacher_forced(model, tokenizer, languages.texts(lang), max_positions, max_length,
                                            inputs=True)
            bar.update()                         # the model's pass over the text, then one per budget
            rows = evaluate_contexts(head, model.lm_head.weight.detach(), H, y, (x, first), contexts,
                                     done=bar.update)
            out["languages"][lang] = {"positions": int(H.shape[0]), "script": languages.SCRIPTS.get(lang, "Latin"),
                                      "results": rows}
    out["summary"] = {e: {"worst": min(r["results"][i]["top1_agreement"] for r in out["languages"].values()),
                          "mean": sum(r["results"][i]["top1_agreement"] for r in out["languages"].values())
                          / len(out["languages"]),
                          "kld_worst": max(r["results"][i]["kld_mean"] for r in out["languages"].values()),
                          "kld_mean": sum(r["results"][i]["kld_mean"] for r in out["languages"].values())
                          / len(out["languages"])}
                      for i, e in enumerate(contexts)}
    return out


def worst_domains(domains: dict) -> dict:
    """Per metric, the worst domain among those the build never saw (all, if it saw every one)."""
    unseen = {d: r for d, r in domains.items() if not r["in_domain"]} or domains
    worst = {}
    for key, sign in (("top1_agreement", 1), ("tv_distance", -1), ("ppl_ratio", -1)):
        def value(r):
            x = r["results"][0]
            return x["ppl_flashhead"] / x["ppl_dense"] if key == "ppl_ratio" else x[key]
        d = min(unseen, key=lambda d: sign * value(unseen[d]))
        worst[key] = {"domain": d, "value": value(unseen[d])}
    return worst


def set_default_probes(model_dir, probes: int) -> None:
    """Write `probes` as the default of a FlashHead model directory (flashhead.json)."""
    index = load_assets(model_dir)
    index.config.probes = probes
    index.save(model_dir)


def plot(result: dict, path) -> None:
    """PNG: top-1 agreement and TV distance against bytes_fraction (bf16), one point per probe
    count, with the targets of docs/FIDELITY.md dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(result["results"], key=lambda r: r["probes"])
    x = [r["bytes_fraction_bf16"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label, target in ((axes[0], "top1_agreement", "greedy top-1 agreement", 0.995),
                                   (axes[1], "tv_distance", "TV distance to dense (T=1)", 0.03)):
        ax.plot(x, [r[key] for r in rows], "o-")
        for xi, r in zip(x, rows):
            ax.annotate(f"P={r['probes']}", (xi, r[key]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.axhline(target, color="gray", ls=":")
        ax.axvline(0.125, color="gray", ls=":")
        ax.set_xlabel("bytes read per step / dense head (bf16)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    name = Path(str(result.get("model", ""))).name
    fig.suptitle(f"{name}: {result['clusters']} clusters x {result['cluster_size']}, "
                 f"{result['positions']} positions of held-out text")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_suite(result: dict, path) -> None:
    """PNG: per domain, top-1 agreement and TV distance against bytes read (bf16), one line per
    domain over the probe counts evaluated, with the targets of docs/FIDELITY.md dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for d, r in result["domains"].items():
        rows = sorted(r["results"], key=lambda x: x["bytes_fraction_bf16"])
        x = [q["bytes_fraction_bf16"] for q in rows]
        label = d + (" (in-domain)" if r["in_domain"] else "")
        for ax, key in ((axes[0], "top1_agreement"), (axes[1], "tv_distance")):
            ax.plot(x, [q[key] for q in rows], marker="o", label=label, ls="--" if r["in_domain"] else "-")
    for ax, label, target in ((axes[0], "greedy top-1 agreement", 0.995), (axes[1], "TV distance to dense (T=1)", 0.03)):
        ax.axhline(target, color="gray", ls=":")
        ax.axvline(0.125, color="gray", ls=":")
        ax.set_xlabel("bytes read per step / dense head (bf16), mean over steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{Path(str(result.get('model', ''))).name}: per domain, calibrated on {result.get('calibration')}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
