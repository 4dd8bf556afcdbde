"""The head-rows interface (rows.py), model-free: every storage answers the same operations with the
same values — a tensor in place, its rows in cluster order, GGUF Q8_0 blocks in the file's order and
in cluster order."""
import pytest
import torch

from flashhead.core.q8rows import Q8Rows
from flashhead.core.rows import ArrangedRows, TensorRows, as_rows
from test_q8rows import _q8_blocks


def _storages():
    g = torch.Generator().manual_seed(0)
    v, d, cs = 800, 64, 16
    w = torch.randn(v, d, generator=g)
    slots = torch.randperm(v, generator=g).view(-1, cs)                  # [K, cs] cluster k's tokens
    q8 = Q8Rows(_q8_blocks(w), d)
    bf16 = w.bfloat16()
    yield "fp32", TensorRows(w), slots, TensorRows(w)
    yield "bf16", as_rows(bf16), slots, TensorRows(bf16)
    yield "fp32 arranged", TensorRows(w).arrange(slots), slots, TensorRows(w)
    yield "bf16 arranged", TensorRows(bf16).arrange(slots), slots, TensorRows(bf16)
    yield "q8_0", as_rows(q8), slots, q8
    yield "q8_0 arranged", q8.arrange(slots), slots, q8


@pytest.mark.parametrize("name,rows,slots,plain", list(_storages()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_storage_answers_alike(name, rows, slots, plain):
    """`dot` of clusters = `dot_tokens` of their tokens, bit for bit; `gather` by token id whatever the
    order the rows are kept in (`plain`: the same rows in place); `dense_argmax` = `dense(h).argmax(1)`."""
    h = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    clusters = torch.tensor([0, 3, 7, 49])

    def buffer(name, shape, dtype):
        return torch.empty(shape, dtype=dtype)

    z = rows.dot(clusters, slots, h, buffer)                              # [5, 4*16] fp32
    tok = slots[clusters].flatten()
    assert z.shape == (5, tok.numel())
    assert torch.equal(z, rows.dot_tokens(tok, h))
    assert torch.equal(z, plain.dot(clusters, slots, h, buffer))
    ids = torch.tensor([5, 0, 799, 5])
    assert torch.equal(rows.gather(ids), plain.gather(ids))
    hd = h.to(rows.dtype)
    assert torch.equal(rows.dense_argmax(hd), rows.dense(hd).argmax(1))
    assert (rows.arranged_bytes > 0) == ("arranged" in name)


def test_arrange_is_one_copy_of_the_source():
    """Arranging arranged rows starts again from the model's rows, and `apply` moves the copy only."""
    w = torch.randn(64, 32)
    slots = torch.randperm(64).view(4, 16)
    a = TensorRows(w).arrange(slots)
    assert isinstance(a, ArrangedRows) and a.weight is w
    assert torch.equal(a.table, w[slots.flatten()])
    again = a.arrange(slots.flip(0))
    assert torch.equal(again.table, w[slots.flip(0).flatten()])
    moved = a.apply(lambda t: t.double())
    assert moved.table.dtype == torch.float64 and moved.weight is w
