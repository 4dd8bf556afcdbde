"""Per-domain fidelity experiments on cached hidden states (experiments/suite_data.py).

    python experiments/suite_lab.py MODEL [--variants fortunes self mix loo] [--json OUT]

Each variant is a calibration: a set of sources whose calibration documents (and the model's own
samples, `self`) fit a build with fit.fit_index, exactly as `flashhead build` does; it is then
scored on the eval documents of every suite domain with the library's own step
(evaluate.evaluate_hidden), at the build's own probe setting. `loo` = one build per suite domain
X, calibrated on every source but X, scored on X: the out-of-domain number. `oracle:X` = the
default sources plus X's eval positions themselves, scored on X: what the build could reach if it
knew the text (an upper bound, experiments/FINDINGS.md "What a build can reach"). Options change the
recipe of every variant and name its rows (`--accents`, `--self-shares`, `--translations`,
`--breadth`, `--shrink`, `--positions`: the total, so a source added on top keeps the others'
shares); the drawing options are one `Recipe`, part of each cached build's name.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch



# the build recipe these rows come from (suite_report.py marks rows of earlier recipes)
RECIPE = "kinds"


@dataclass(frozen=True)
class Recipe:
    """How every variant of one run draws and stores its calibration (the options of main): the
    total of positions (raise it to add a source on top, the others keeping their shares), the
    own samples' starts, batch, accented-letter kinds and shares, the catalogs' shares, and the
    stage-1 storage. `suffix` names the cached build, `label` the rows; defaults add nothing."""
    positions: int = 16384
    starts: int = 3
    batch: int = 64
    accents: bool = False
    self_shares: int = 1
    tr_shares: int = 1
    quantization: str = "int8"

    def _sampling(self) -> str:
        """How the own samples are drawn, in their key and in every build's name."""
        return ((f"-starts{self.starts}" if self.starts != 3 else "") + (f"-b{self.batch}" if self.batch != 64 else "")
                + ("-accents" if self.accents else ""))

    def own_key(self, share: int) -> str:
        return f"self@{share}-rr{self._sampling()}/cal_h"

    def suffix(self) -> str:
        return (self._sampling() + (f"-self{self.self_shares}" if self.self_shares != 1 else "")
                + (f"-tr{self.tr_shares}" if self.tr_shares != 1 else "")
                + (f"-n{self.positions}" if self.positions != 16384 else ""))

    def label(self, sources: str = "") -> str:
        """The rows' name suffix, `sources` (the optional sources' names) in its place."""
        return ((f"@starts{self.starts}" if self.starts != 3 else "") + (f"@batch{self.batch}" if self.batch != 64 else "")
                + (f"@{self.quantization}" if self.quantization != "int8" else "") + sources
                + ("@accents" if self.accents else "") + (f"@self{self.self_shares}" if self.self_shares != 1 else "")
                + (f"@tr{self.tr_shares}" if self.tr_shares != 1 else ""))


def own_samples(model: str, data: dict, share: int, recipe: Recipe = Recipe()) -> torch.Tensor:
    """The model's own samples exactly as `flashhead build` draws its share of them
    (hidden.sampled(model, tok, share), seed 0: the first sequences of each kind of start, as many
    tokens each as the share allows), generated once per share and kept in the suite's cache file."""
    from suite_data import out_path

    key = recipe.own_key(share)
    if key not in data:
        from safetensors.torch import load_file, save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from flashhead.data import hidden
        from flashhead.build.sources import resolve

        d = resolve(model)
        lm = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        h, _ = hidden.sampled(lm, AutoTokenizer.from_pretrained(d), share, batch=recipe.batch, starts=recipe.starts,
                              accents=recipe.accents, progress=False)
        stored = load_file(str(out_path(model)))
        stored[key] = data[key] = h.contiguous()
        save_file(stored, str(out_path(model)))
    return data[key]


def calibration(data: dict, sources: list[str], model: str | None = None, recipe: Recipe = Recipe()):
    """Equal shares of `recipe.positions` from each source: (fit [N, d], held-out [M, d]), the last
    quarter of every share held out (whole texts, as build.py holds out the last quarter). `self`
    is drawn as the build draws it (own_samples) when `model` is given, `recipe.self_shares` shares
    of it (`recipe.tr_shares` of `translations`)."""
    share = recipe.positions // len(sources)
    fit, held = [], []
    for s in sources:
        if s == "self" and model:
            h = own_samples(model, data, share * recipe.self_shares, recipe)
        elif s.endswith("@eval"):     # the oracle: every position a domain is scored on, all fitted
            h = data[f"{s[:-5]}/eval_h"]
            fit.append(h)
            held.append(h[h.shape[0] - h.shape[0] // 4:])
            continue
        else:
            h = data[f"{s}/cal_h"][:share * (recipe.tr_shares if s == "translations" else 1)]
        k = h.shape[0] - h.shape[0] // 4
        fit.append(h[:k])
        held.append(h[k:])
    return torch.cat(fit), torch.cat(held)


def fitted(model: str, data: dict, sources: list[str], recipe: Recipe = Recipe(), **kw):
    """fit.fit_index on the sources' calibration states, cached by model, sources and recipe;
    -> (index, held). Another stage-1 storage than int8 takes the int8 build's clusters (they do
    not depend on it) and fits its own probes and offsets (fit.fit_probes), as `flashhead build
    --quantization` would."""
    from flashhead import ClusterIndex, FlashHeadConfig
    from flashhead.core.cache import cache_root
    from flashhead.build.calibrate import USAGE_LOGITS
    from flashhead.build.fit import TARGET_AGREEMENT, fit_index, fit_probes

    fit, held = calibration(data, sources, model, recipe)
    kw.setdefault("target_agreement", TARGET_AGREEMENT)
    # the recipe in the tag: a cached index of an older recipe (8 rounds, usage on every position,
    # self-samples from BOS alone) is not reused for the current one
    tag = ("-".join(sorted(sources)) + "".join(f"-{k}{v}" for k, v in sorted(kw.items()))
           + f"-r{FlashHeadConfig().iterations}-u{USAGE_LOGITS}-kinds-asbuilt-rr" + recipe.suffix())
    q = recipe.quantization
    path = cache_root() / "suite" / "indices" / model / (tag + ("" if q == "int8" else f"-{q}"))
    if (path / "flash_head_assets").is_dir():
        return ClusterIndex.load(path / "flash_head_assets"), held
    if q == "int8":
        index = fit_index(data["head"], fit, FlashHeadConfig(), held_out=held, **kw)
    else:
        index, _ = fitted(model, data, sources, dataclasses.replace(recipe, quantization="int8"), **kw)
        index.config = dataclasses.replace(index.config, quantization=q)
        index = fit_probes(index, data["head"], fit, held, kw["target_agreement"])
    index.save(path)
    return index, held


def needed(head, w, h, target: float = 0.995) -> dict:
    """The probes this build would need on these positions for `target` greedy agreement (the dense
    top-1 token's cluster ranked within P by stage 1), what that step reads (bf16 bytes), and the
    positions whose dense top-1 the build's own P leaves unprobed (`unprobed`: two builds scored on
    the same positions are compared position by position, suite_report.py)."""
    from flashhead.build.fit import dense_top1_rank, smallest_probes
    from flashhead.core.metrics import cost

    ranks = dense_top1_rank(head, h, w)
    p = smallest_probes(ranks, target)
    frac = cost(*w.shape, head.num_clusters, head.cluster_size, p, head.config.quantization,
                torch.bfloat16)["bytes_fraction"]
    return {"probes_for_995": p, "bytes_for_995": round(frac, 4),
            "unprobed": torch.nonzero(ranks >= head.probes).squeeze(1).tolist()}


def main():
    from suite_data import load

    from flashhead import ClusterIndex, FlashHead, FlashHeadConfig, balanced_kmeans
    from flashhead.data.corpus import DOMAINS, LANGUAGES, SUITE
    from flashhead.tools.evaluate import evaluate_hidden
    from flashhead.core.index import fingerprint

    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--variants", nargs="+", default=["suite", "loo", "prose", "self", "cosine"])
    p.add_argument("--positions", type=int, default=16384)
    p.add_argument("--eval-positions", type=int, default=3072, help="scored positions per domain")
    p.add_argument("--usage-floor", type=float, default=None, help="calibrate.USAGE_FLOOR for these builds")
    p.add_argument("--shrink", type=float, default=0.0, help="calibrate.query_transform's shrink toward the "
                   "identity for these builds; rows named VARIANT@shrinkS")
    p.add_argument("--starts", type=int, default=3, help="hidden.sampled's start tokens for `self` "
                   "(0: from BOS alone, the earlier recipe); rows are named VARIANT@startsN")
    p.add_argument("--self-batch", type=int, default=64, help="hidden.sampled's batch for `self` (sequences "
                   "per share: the share's positions are spread over them); rows named VARIANT@batchN")
    p.add_argument("--quantization", default="int8", help="stage-1 storage of the builds (int8, the "
                   "default, or int4: the int8 build's clusters, its own probes at the bytes cap and "
                   "offsets); rows named VARIANT@int4")
    p.add_argument("--breadth", action="store_true", help="also calibrate on corpus.LANGUAGES (Polish, "
                   "Czech, Bulgarian, Chinese; their states collected by suite_data.py --domains ...); rows "
                   "named VARIANT@breadth")
    p.add_argument("--translations", action="store_true", help="also calibrate on the installed packages' "
                   "message catalogs (corpus `translations`: every language but German, Russian and English; "
                   "collected by suite_data.py --domains translations); rows named VARIANT@translations")
    p.add_argument("--translation-shares", type=int, default=1, help="with --translations: the catalogs "
                   "take this many shares (the others one each); rows named VARIANT@trN")
    p.add_argument("--accents", action="store_true", help="hidden.sampled's starts include a kind per "
                   "accented Latin letter (kinds.py); rows named VARIANT@accents")
    p.add_argument("--self-shares", type=int, default=1, help="the model's own samples take this many "
                   "shares of the calibration (the others one each); rows named VARIANT@selfN")
    p.add_argument("--json", default=None, help="write the rows here (docs/bench/suite-MODEL.json); "
                   "rows of variants not run this time are kept")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("FLASHHEAD_THREADS", "2")))
    data = load(a.model)
    w = data["head"]
    suite = [d for d in SUITE if f"{d}/eval_h" in data]        # no chat for a base model
    everything = [d for d in DOMAINS + (LANGUAGES if a.breadth else ()) + (("translations",) if a.translations else ())
                  if f"{d}/cal_h" in data] + ["self"]
    if a.translations and "translations" not in everything:
        raise SystemExit(f"--translations: collect it first (suite_data.py {a.model} --domains translations)")
    if a.breadth and not set(LANGUAGES) <= set(everything):
        raise SystemExit(f"--breadth: collect {', '.join(LANGUAGES)} first (suite_data.py {a.model} --domains ...)")
    plans = []
    for v in a.variants:
        if v == "suite":      # the default build: every source
            plans.append((v, everything, suite))
        elif v == "loo":      # leave one domain out: the build never saw X, scored on X
            plans += [(f"without {x}", [s for s in everything if s != x], [x]) for x in suite]
        elif v.startswith("without:"):   # one leave-one-out build, e.g. without:german
            x = v.split(":", 1)[1]
            if x not in suite:
                raise SystemExit(f"{v}: no scored domain {x!r} in the cached states (have {', '.join(suite)})")
            plans.append((f"without {x}", [s for s in everything if s != x], [x]))
        elif v.startswith("oracle:"):    # an upper bound: calibrated on the positions it is scored on too
            x = v.split(":", 1)[1]
            if x not in suite:
                raise SystemExit(f"{v}: no scored domain {x!r} in the cached states (have {', '.join(suite)})")
            plans.append((f"oracle {x}", everything + [f"{x}@eval"], [x]))
        elif v in everything:
            plans.append((v, [v], suite))
        elif v == "cosine":   # the uncalibrated recipe: balanced spherical k-means of the head rows
            plans.append((v, None, suite))
        else:
            raise SystemExit(f"unknown variant {v}")
    recipe = Recipe(a.positions, a.starts, a.self_batch, a.accents, a.self_shares, a.translation_shares,
                    a.quantization)
    label = recipe.label(("@breadth" if a.breadth else "") + ("@translations" if a.translations else ""))
    plans = [(name + label + (f"@shrink{a.shrink:g}" if a.shrink else ""), s, d) for name, s, d in plans]
    out = json.loads(Path(a.json).read_text()) if a.json and Path(a.json).is_file() else []
    names = {name for name, _, _ in plans}
    out = [r for r in out if r["variant"] not in names]
    base = None
    for name, sources, domains in plans:
        t = time.time()
        if sources is None:
            c = balanced_kmeans(w, 16, 8, progress=False)
            index = ClusterIndex(FlashHeadConfig(probes=base or 1, quantization=a.quantization), c.assignments,
                                 c.centroids, fingerprint(w))
        else:
            kw = ({} if a.usage_floor is None else {"usage_floor": a.usage_floor}) | ({"shrink": a.shrink} if a.shrink else {})
            index, _ = fitted(a.model, data, sources, recipe, **kw)
            base = base or index.config.probes
        head = FlashHead(w, index)
        for dom in domains:
            n = a.eval_positions
            r = evaluate_hidden(head, w, data[f"{dom}/eval_h"][:n], data[f"{dom}/eval_y"][:n], [head.probes], chunk=256)[0]
            r.update(variant=name, domain=dom, sources=sources, seconds=round(time.time() - t), recipe=RECIPE,
                     **needed(head, w, data[f"{dom}/eval_h"][:n]))
            out.append(r)
            print(f"{name:>18} {dom:>8} P={r['probes']:>5} agree {r['top1_agreement']:.4f} "
                  f"TV {r['tv_distance']:.4f} ppl {r['ppl_flashhead'] / r['ppl_dense']:.3f} "
                  f"bytes {r['bytes_fraction_bf16']:.3f}", flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
