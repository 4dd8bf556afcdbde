"""A head kept in GGUF's Q8_0 blocks (q8rows.py) and the native step (kernels/q8_0.c), model-free:
Q8_0 blocks written here from a random head, FlashHead on them vs the TORCH reference on the same
rows. (tests/test_llamacpp.py checks the same against real llama.cpp on SmolLM2.)"""
import numpy as np
import pytest
import torch

from flashhead import ClusterIndex, FlashHead, FlashHeadConfig
from flashhead.core.index import fingerprint
from flashhead.core.q8rows import Q8Rows


def _q8_blocks(w: torch.Tensor) -> torch.Tensor:
    """w [V, d] -> Q8_0 bytes [V, d/32*34]: per 32 values an fp16 scale max|x|/127, then round(x/scale)."""
    v, d = w.shape
    x = w.double().numpy().reshape(v, d // 32, 32)
    scale = (np.abs(x).max(2, keepdims=True) / 127).astype(np.float16)
    q = np.round(x / np.maximum(scale.astype(np.float64), 1e-30)).clip(-127, 127).astype(np.int8)
    out = np.concatenate([scale.view(np.uint8), q.view(np.uint8)], axis=2)   # [V, d/32, 2 + 32]
    return torch.from_numpy(np.ascontiguousarray(out.reshape(v, -1)))


def _heads(quant, probes, exact=(), arrange=False):
    g = torch.Generator().manual_seed(3)
    v, d = 4000 - 7, 64
    w = torch.randn(v, d, generator=g)
    rows = Q8Rows(_q8_blocks(w), d)
    assign = torch.randperm(v, generator=g) // 16
    k = int(assign.max()) + 1
    cent = torch.zeros(k, d).index_add_(0, assign, w) / torch.bincount(assign, minlength=k)[:, None]
    index = ClusterIndex(FlashHeadConfig(probes=probes, quantization=quant, exact_tokens=list(exact)),
                         assign, cent, fingerprint(rows.gather(torch.arange(v))))
    return rows, FlashHead(rows, index, kernel="cpu", arrange=arrange), FlashHead(rows, index, kernel="torch")


@pytest.mark.parametrize("quant", ["int8", "none"])    # int8: the fused native step; none: stage 2 only
@pytest.mark.parametrize("arranged", [False, True])
def test_q8_step_equals_reference(quant, arranged):
    """Same clusters as TORCH on the dequantized rows (stage 1 shared up to int8 rounding, so the
    check uses all probes for int8 and the default for 'none'), logits within the Q8_0 rounding of h
    (llama.cpp quantizes h to Q8_0 blocks too: measured max error 0.006-0.007 of the logit scale)."""
    rows, cpu, ref = _heads(quant, probes=250 if quant == "int8" else 9, exact=(11, 3001), arrange=arranged)
    assert cpu.arranged == arranged and not ref.arranged
    for n in (1, 5):
        h = torch.randn(n, 64, generator=torch.Generator().manual_seed(n))
        s_c, tok_c, z_c = cpu.probe(h)
        s_r, tok_r, z_r = ref.probe(h)
        if quant == "none":   # fp32 centroids: the same products, summed in rows.c's order
            torch.testing.assert_close(s_c, s_r, rtol=1e-5, atol=1e-5)
        assert torch.equal(tok_c.sort(1).values, tok_r.sort(1).values)
        scale = float(z_r.abs().max())
        got = torch.zeros(n, rows.shape[0]).scatter_(1, tok_c, z_c)
        want = torch.zeros(n, rows.shape[0]).scatter_(1, tok_r, z_r)
        assert float((got - want).abs().max()) < 0.03 * scale
        assert torch.equal(cpu.greedy(h), cpu(h).argmax(1))            # the greedy pick of its own logits
        torch.testing.assert_close(cpu(h)[:, [11, 3001]], ref(h)[:, [11, 3001]], rtol=0, atol=0.03 * scale)


def test_q8_fused_step_takes_the_context_as_the_reference_does():
    """The native fused step (int8 stage 1, q8_0.c select_top) with a context probes the clusters
    kernels/step.py `rank` picks from the same scores: the context's best E, then stage 1's best."""
    rows, cpu, _ = _heads("int8", probes=12)
    cpu.context_probes = 5
    g = torch.Generator().manual_seed(7)
    h = torch.randn(6, 64, generator=g)
    ctx = torch.rand(6, cpu.num_clusters, generator=g) < 0.2
    ctx[0] = False
    ctx[1] = False
    ctx[1, :3] = True                                     # fewer context clusters than E
    scores, tok, z = cpu.probe(h, ctx)
    want = cpu.step.rank(scores, ctx).topk(12, dim=1).indices
    for i in range(6):
        got = set(cpu.assignments[tok[i, : 12 * 16]].tolist())
        assert got == set(want[i].tolist())
    assert torch.equal(cpu.greedy(h, ctx), cpu(h, ctx).argmax(1))
    plain = cpu.probe(h)[1]
    assert torch.equal(plain[0], tok[0])                  # an empty context: stage 1 alone
    assert not torch.equal(plain[2:], tok[2:])


@pytest.mark.parametrize("n", [1, 3, 16, 21, 37])
def test_q8_dense_is_the_probed_dot_bit_for_bit(n):
    """The dense head (verified decoding's check, q8_0.c fh_q8_dense: states by 16, then by two, then
    an odd one alone where the CPU has AVX-512 VNNI; by up to 8 on AVX2) gives every logit the product
    `dot` gives the same token, bit for bit, for every state of the batch; `dense_argmax` its argmax."""
    g = torch.Generator().manual_seed(n)
    v, d = 300, 96
    rows = Q8Rows(_q8_blocks(torch.randn(v, d, generator=g)), d)
    h = torch.randn(n, d, generator=g) * 3
    z = rows.dense(h)
    tok = torch.arange(v)
    assert torch.equal(z, rows.dot_tokens(tok, h))
    assert torch.equal(rows.dense_argmax(h), z.argmax(1))
