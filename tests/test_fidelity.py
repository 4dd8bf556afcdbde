"""Quality of the default build on every domain of the suite (SmolLM2-135M, corpus.py).

The default build calibrates on the calibration documents of every domain (and the model's own
samples); the eval documents scored here never enter a build, but they are the same kinds of text:
these are in-domain numbers (docs/FIDELITY.md has the leave-one-domain-out table, the number for
text a build never saw). Floors are measured values less a margin (numbers in the comments): a
regression in the corpus, calibration, clustering, quantization or the estimate fails here.
"""
import pytest

from flashhead import balanced_kmeans
from flashhead.data.corpus import SUITE
from flashhead.tools.evaluate import evaluate_hidden
from flashhead.build.fit import dense_top1_rank

POSITIONS = 2048
# Measured on the default build (P = 287, bytes 0.125 in bf16; 2026-11-30, the 2-core host;
# `flashhead build smollm2-135m -o DIR && flashhead eval DIR --max-positions 2048 --prompts 0
# --json`), per domain: (agreement, TV, perplexity ratio). Floors: 0.8 points of agreement, +50% TV, +0.15 ppl ratio: a
# build calibrated on English prose alone fails them (docs 97.7%, code 96.7%).
MEASURED = {
    "prose": (0.9902, 0.0398, 1.33), "docs": (0.9937, 0.0154, 1.08), "code": (0.9932, 0.0174, 1.19),
    "legal": (0.9941, 0.0220, 1.13), "german": (0.9980, 0.0226, 1.08), "russian": (1.0000, 0.0044, 1.00),
    "chat": (0.9980, 0.0119, 1.11),
}


@pytest.fixture(scope="module")
def suite(smollm2_flashhead_dir):
    from flashhead.tools.evaluate import suite_texts
    from flashhead.data.hidden import teacher_forced
    from flashhead.integrations import hf

    model, tok = hf.load(smollm2_flashhead_dir)
    data = {d: teacher_forced(model, tok, suite_texts(model, tok, d, "eval"), POSITIONS) for d in SUITE}
    return model, tok, data


def test_every_domain_at_the_default_probes(suite):
    from flashhead.data.chat import control_token_ids

    model, tok, data = suite
    head, w = model.lm_head.flashhead, model.lm_head.weight.detach()
    from flashhead.core import metrics
    import torch
    bf16 = metrics.cost(head.vocab, head.hidden, head.num_clusters, head.cluster_size, head.probes,
                        head.config.quantization, torch.bfloat16)["bytes_fraction"]
    assert bf16 <= 0.125                                 # the default build stays within 1/8 of the head
    for d, (H, y) in data.items():
        r = evaluate_hidden(head, w, H, y, [head.probes], chunk=256,
                            stop_ids=control_token_ids(tok) if d == "chat" else None)[0]
        agree, tv, ppl = MEASURED[d]
        assert H.shape[0] == POSITIONS, d
        assert r["top1_agreement"] >= agree - 0.008, (d, r["top1_agreement"])
        assert r["tv_distance"] <= tv * 1.5, (d, r["tv_distance"])
        assert r["ppl_flashhead"] / r["ppl_dense"] <= ppl + 0.15, (d, r["ppl_flashhead"] / r["ppl_dense"])
        if d == "chat":
            # the reply's end tokens are scored exactly: wherever the dense head ends the turn,
            # FlashHead ends it too; it ends early only where a missed top-1 leaves the end token
            # on top (measured: 0 of 2,048 positions)
            assert r["stop_positions"] >= 10 and r["stop_match"] == 1.0
            assert r["false_stops"] <= 0.002


@pytest.fixture(scope="module")
def plain(suite):
    """The uncalibrated recipe: plain spherical k-means of the same head (the paper's recipe, no
    hidden states), at the default build's probes."""
    from flashhead import ClusterIndex, FlashHead, FlashHeadConfig
    from flashhead.core.index import fingerprint

    model, _, _ = suite
    head, w = model.lm_head.flashhead, model.lm_head.weight.detach()
    c = balanced_kmeans(w, head.cluster_size, iterations=8, progress=False)
    return FlashHead(w, ClusterIndex(FlashHeadConfig(probes=head.probes), c.assignments, c.centroids, fingerprint(w)))


def test_calibrated_clusters_beat_uncalibrated(suite, plain):
    """The build's calibrated clusters against the uncalibrated recipe at the same probes, on every
    domain (in-domain)."""
    model, _, data = suite
    head, w = model.lm_head.flashhead, model.lm_head.weight.detach()
    for d, (H, _) in data.items():
        miss_built = float((dense_top1_rank(head, H, w) >= head.probes).float().mean())
        miss_plain = float((dense_top1_rank(plain, H, w) >= head.probes).float().mean())
        # measured (docs/bench/suite-smollm2-135m.json): 4.8x (legal) to 34x (german) fewer
        # misses, none left on russian (25.9% for the plain recipe); floor 2x
        assert miss_built * 2 <= miss_plain, (d, miss_built, miss_plain)


def test_worst_domain_left_out(suite, plain, smollm2_hf_dir, tmp_path_factory):
    """Licences scored by a build that never saw any (every other default source, the default
    recipe otherwise): SmolLM2's worst domain of the leave-one-domain-out table, the number for a
    user's unknown text (docs/FIDELITY.md). Hidden states do not depend on the head: the default
    build's teacher-forced licences are scored through the left-out build's index."""
    from flashhead import ClusterIndex, FlashHead
    from flashhead.build import build
    from flashhead.data.corpus import DOMAINS
    from flashhead.core.index import ASSETS_DIR

    model, _, data = suite
    w = model.lm_head.weight.detach()
    out = build(smollm2_hf_dir, tmp_path_factory.mktemp("loo") / "without-legal", progress=False,
                calibration=[d for d in DOMAINS if d != "legal"] + ["self"])
    index = ClusterIndex.load(out / ASSETS_DIR)
    assert "legal" not in index.build["calibration"]["sources"]
    head = FlashHead(w, index)
    assert head.probes == plain.probes                   # both at the bytes cap: equal bytes
    H, y = data["legal"]
    r = evaluate_hidden(head, w, H, y, [head.probes], chunk=256)[0]
    # measured: 94.97% / 0.0653 / ppl ratio 2.52 on the 2-core AVX2 host, 93.65% on a 2-core
    # AVX-512 (Zen 4) host: the build's numerics follow the instruction set (other clusters), so the
    # floor is the lower host's value less 0.65 points; TV +50%
    assert r["top1_agreement"] >= 0.930, r["top1_agreement"]
    assert r["tv_distance"] <= 0.0653 * 1.5, r["tv_distance"]
    # no domain worse than the uncalibrated recipe at equal bytes, left out too (measured: 103
    # against 248 of 2,048 dense top-1 tokens unprobed)
    miss_built = int((dense_top1_rank(head, H, w) >= head.probes).sum())
    miss_plain = int((dense_top1_rank(plain, H, w) >= plain.probes).sum())
    assert miss_built < miss_plain, (miss_built, miss_plain)


def test_estimate_offsets_narrow_the_perplexity_gap(suite):
    """The built per-token offsets (estimate.py) against none, same clusters and probes."""
    model, _, data = suite
    head, w = model.lm_head.flashhead, model.lm_head.weight.detach()
    H, y = data["prose"]
    with_offsets = evaluate_hidden(head, w, H, y, [head.probes], chunk=256)[0]
    with head.flashhead_only(offsets=False):
        without = evaluate_hidden(head, w, H, y, [head.probes], chunk=256)[0]
    assert head.offsets.abs().sum() > 0                                  # restored
    gap = {name: r["ppl_flashhead"] / r["ppl_dense"] - 1 for name, r in (("with", with_offsets), ("without", without))}
    assert with_offsets["top1_agreement"] == without["top1_agreement"]    # greedy never changes
    # the offsets lower the gap on prose (P = 287; suite build, perplexity ratio 1.21 with them)
    assert gap["with"] < gap["without"]
    assert with_offsets["tv_distance"] <= 1.02 * without["tv_distance"]
