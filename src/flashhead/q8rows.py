"""A head weight [V, d] kept in GGUF's Q8_0 form: the model file's own bytes, never a dense copy.

Each row is d/32 blocks of (fp16 scale, 32 int8): 34 bytes per 32 values, 0.27 of fp32's bytes.
llama.cpp models (backends/llamacpp.py) tie or store their head this way; FlashHead reads the
probed rows in place through the native kernel (kernels/q8_0.c), so the extra memory FlashHead adds
is its index only. `gather_rows` and `dense_logits` are the two ways the rest of the core reaches a
head weight's values, whichever form it has.
"""
from __future__ import annotations

import torch

from .config import FlashHeadError

QK = 32            # values per block
BLOCK_BYTES = 34   # fp16 scale + 32 int8


class Q8Rows:
    dtype = torch.float32          # the dtype its products come out in
    device = torch.device("cpu")

    def __init__(self, blocks: torch.Tensor, hidden: int):
        """blocks: uint8 [V, hidden/32*34] (e.g. torch.from_numpy of the GGUF tensor's memmap)."""
        if hidden % QK or blocks.dtype != torch.uint8 or blocks.dim() != 2 \
                or blocks.shape[1] != hidden // QK * BLOCK_BYTES or not blocks.is_contiguous():
            raise FlashHeadError(f"not a Q8_0 head of hidden size {hidden}: uint8 "
                                 f"{list(blocks.shape)}, contiguous={blocks.is_contiguous()}")
        self.blocks = blocks      # the rows stage 2 reads: the file's, or a cluster-ordered copy
        self.file_blocks = blocks   # the file's rows by token id (the dense head reads these)
        self.shape = torch.Size([blocks.shape[0], hidden])
        self.nbytes = blocks.numel()
        self.row_of = None        # token -> row of `blocks` once arranged in cluster order
        self.threads = torch.get_num_threads()   # the native kernel's OpenMP threads

    def arrange(self, block_ids: torch.Tensor) -> None:
        """Keep the rows in cluster order (block_ids [K, cs]: cluster k's tokens): one copy of the
        head's Q8_0 bytes (no dense copy) where each cluster is one contiguous run of cs rows.
        The file's rows are scattered over the whole tensor: gathering them costs a cache and TLB
        miss per row, about 2x the time of reading the same bytes in runs (kernels/q8_0.c). The
        file's own tensor is then touched only where llama.cpp looks up input embeddings."""
        ids = block_ids.reshape(-1).to(torch.int64)
        blocks = self.blocks.index_select(0, ids)
        row_of = torch.empty(self.shape[0], dtype=torch.int64)
        row_of[ids.flip(0)] = torch.arange(ids.numel() - 1, -1, -1)   # first slot of a repeated token
        self.blocks, self.row_of, self.nbytes = blocks, row_of, blocks.numel()

    def detach(self) -> "Q8Rows":
        return self

    def dim(self) -> int:
        return 2

    def _lib(self):
        from .kernels.native import library

        return library()

    def _positions(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.reshape(-1).to(torch.int64)
        return (ids if self.row_of is None else self.row_of[ids]).contiguous()

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Dequantized rows [R, d] fp32 of token ids [R]."""
        ids = self._positions(ids)
        out = torch.empty(ids.numel(), self.shape[1])
        self._lib().fh_q8_rows(self.blocks.data_ptr(), self.blocks.shape[1], ids.data_ptr(),
                               ids.numel(), self.shape[1], out.data_ptr())
        return out

    def dot(self, ids: torch.Tensor, h: torch.Tensor, rows: bool = False) -> torch.Tensor:
        """Exact logits [N, R] fp32 of token ids [R] (or, `rows=True`, of rows of `blocks`) for
        hidden states h [N, d], computed as llama.cpp computes its logits (kernels/q8_0.c)."""
        ids = ids.reshape(-1).to(torch.int64).contiguous() if rows else self._positions(ids)
        h = h.float().contiguous()
        out = torch.empty(h.shape[0], ids.numel())
        self._lib().fh_q8_dot(self.blocks.data_ptr(), self.blocks.shape[1], ids.data_ptr(), ids.numel(),
                              h.data_ptr(), h.shape[0], self.shape[1], out.data_ptr(),
                              self.threads)
        return out


    def dense(self, h: torch.Tensor) -> torch.Tensor:
        """The dense head [N, V] fp32 for hidden states h [N, d]: every row of the file in one pass,
        each row read once for all N states (kernels/q8_0.c fh_q8_dense), each logit the product
        `dot` computes for that token, bit for bit."""
        h = h.float().contiguous()
        out = torch.empty(h.shape[0], self.shape[0])
        self._lib().fh_q8_dense(self.file_blocks.data_ptr(), self.file_blocks.shape[1], self.shape[0],
                                h.data_ptr(), h.shape[0], self.shape[1], out.data_ptr(), self.threads)
        return out


    def dense_argmax(self, h: torch.Tensor) -> torch.Tensor:
        """The dense head's greedy tokens [N] for h [N, d]: `dense(h).argmax(1)`, without the
        [N, V] logits (kernels/q8_0.c fh_q8_dense_argmax)."""
        h = h.float().contiguous()
        best = torch.empty(h.shape[0], dtype=torch.int64)
        value = torch.empty(h.shape[0])
        self._lib().fh_q8_dense_argmax(self.file_blocks.data_ptr(), self.file_blocks.shape[1], self.shape[0],
                                       h.data_ptr(), h.shape[0], self.shape[1], best.data_ptr(),
                                       value.data_ptr(), self.threads)
        return best


def gather_rows(weight, ids: torch.Tensor) -> torch.Tensor:
    """Rows [R, d] of a head weight (a tensor in its own dtype, or Q8Rows dequantized to fp32)."""
    if isinstance(weight, Q8Rows):
        return weight.rows(ids)
    return weight.detach().index_select(0, ids.reshape(-1).to(weight.device))


def dense_logits(weight, h: torch.Tensor) -> torch.Tensor:
    """The dense head h @ W.T [N, V] (the dense rule's path and the exact reference)."""
    if isinstance(weight, Q8Rows):
        return weight.dense(h)
    return torch.nn.functional.linear(h, weight)
