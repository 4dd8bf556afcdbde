"""The llama.cpp backend: a GGUF model's body in llama.cpp (through llama-cpp-python's low-level API).

An eval callback (`llama_context_params.cb_eval`, written in C: llamacpp_capture.c `fh_result_norm`)
observes only the graph node named `result_norm`, the final normed hidden state [d, n_outputs],
copies it out and stops the graph there: the dense output projection is never computed, the KV
cache is written as usual. `decode(..., logits=True)` runs the whole graph instead: llama.cpp's own
dense head, the baseline every benchmark compares with.

The head's rows stay in the GGUF file's own Q8_0 blocks (q8rows.py: memory-mapped, no dense copy;
another head type is dequantized once, and says so), read through the head-rows interface (rows.py). `dense_logits` scores hidden states against
every row in one pass (q8_0.c `fh_q8_dense`: each row read once for all states, the products
llama.cpp computes), which is verified decoding's check.

Each sequence has its own cache of `n_ctx` positions; `cut` drops a sequence's positions from one
on (`llama_memory_seq_rm`).
A llama.cpp whose graph has no `result_norm` node stops with an error, never a silent dense run.
"""
from __future__ import annotations

import ctypes
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..core.config import FlashHeadError
from ..kernels import native
from ..core.q8rows import BLOCK_BYTES, QK, Q8Rows
from ..core.rows import as_rows
from . import Entry, chat_text

# llama-cpp-python versions this backend is tested with (node names and the low-level API).
SUPPORTED = ((0, 3, 36), (0, 4, 0))      # [low, high)
NODE = "result_norm"
GGML_TYPE_Q8_0 = 8
# Tokens per llama_decode call (prompts longer than this go in several): bounds llama.cpp's batch
# buffers and the hidden-state capture, whatever n_ctx is.
BATCH = 512


CAPTURE_SOURCE = Path(__file__).with_name("llamacpp_capture.c")


class _Capture(ctypes.Structure):
    """Mirrors `struct fh_capture` in llamacpp_capture.c."""
    _fields_ = [("get_name", ctypes.c_void_p), ("nbytes", ctypes.c_void_p),
                ("tensor_get", ctypes.c_void_p), ("dst", ctypes.c_void_p),
                ("capacity", ctypes.c_int64), ("got", ctypes.c_int64), ("active", ctypes.c_int32)]


def llama_cpp():
    """llama-cpp-python, checked against the tested versions."""
    try:
        import llama_cpp as L
    except ImportError:
        raise FlashHeadError("the llama.cpp backend needs llama-cpp-python: pip install "
                             "'flashhead[llamacpp]' (builds llama.cpp, ~10 minutes on 2 cores)") from None
    version = tuple(int(x) for x in L.__version__.split(".")[:3])
    if not SUPPORTED[0] <= version < SUPPORTED[1]:
        raise FlashHeadError(f"llama-cpp-python {L.__version__} is untested with flashhead "
                             f"(tested: >={'.'.join(map(str, SUPPORTED[0]))},"
                             f"<{'.'.join(map(str, SUPPORTED[1]))})")
    return L


def _ggml(L) -> ctypes.CDLL:
    lib = Path(L.__file__).parent / "lib"
    for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
        if (lib / name).is_file():
            return ctypes.CDLL(str(lib / name))
    raise FlashHeadError(f"no ggml-base library next to llama-cpp-python in {lib}")


def gguf_head(path: Path, threads: int | None = None):
    """The head of a GGUF model: `output.weight`, else the tied `token_embd.weight`. Q8_0 stays in
    the file's blocks (Q8Rows over the memory map, its native kernels on `threads`); any other
    type is dequantized to an fp32 tensor once."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    t = tensors.get("output.weight") or tensors.get("token_embd.weight")
    if t is None:
        raise FlashHeadError(f"{path}: no output.weight or token_embd.weight tensor")
    vocab, hidden = int(t.shape[1]), int(t.shape[0])
    with warnings.catch_warnings():       # the memmap is read-only; nothing writes to it
        warnings.simplefilter("ignore", UserWarning)
        if int(t.tensor_type) == GGML_TYPE_Q8_0:
            return Q8Rows(torch.from_numpy(np.asarray(t.data)).view(vocab, -1), hidden, threads)
    from gguf.quants import dequantize

    print(f"note: {path.name}'s head is {t.tensor_type.name}; FlashHead keeps an fp32 copy "
          f"({vocab * hidden * 4 / 2**20:.0f} MiB)", flush=True)
    return torch.from_numpy(dequantize(np.asarray(t.data), t.tensor_type).copy()).view(vocab, hidden)


class LlamaCppBackend:
    """A GGUF model in llama.cpp. `n_ctx`: positions each sequence may hold (at most the model's
    trained context); `max_sequences`: sequence ids 0 .. max_sequences-1, each with its own cache;
    `chat_dir`: a directory whose tokenizer carries the chat template (a FlashHead directory);
    `flash_attn` (0 off, 1 on, -1 auto), `unified` (one cache for all sequences) and `repack`
    (weights repacked for llama.cpp's batched kernels): llama.cpp's settings, for measuring them
    (benchmarks/llamacpp_settings.py); the defaults are the ones under which a sequence's hidden
    states do not depend on its batch."""

    name = "llamacpp"

    def __init__(self, gguf, n_ctx: int = 2048, threads: int | None = None, max_sequences: int = 8,
                 chat_dir=None, flash_attn: int = -1, unified: bool = False, repack: bool = False):
        L = self._L = llama_cpp()
        self.path = Path(gguf)
        if not self.path.is_file():
            raise FlashHeadError(f"{self.path}: no such GGUF file")
        if n_ctx < 1 or max_sequences < 1:
            raise FlashHeadError("need n_ctx >= 1 and max_sequences >= 1")
        threads = threads or min(os.cpu_count() or 1, torch.get_num_threads())
        L.llama_backend_init()
        _quiet(L)
        mp = L.llama_model_default_params()
        mp.use_extra_bufts = repack
        self.model = L.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise FlashHeadError(f"llama.cpp could not load {self.path}")
        self.vocab_ptr = L.llama_model_get_vocab(self.model)
        self.vocab = L.llama_vocab_n_tokens(self.vocab_ptr)
        self.hidden = L.llama_model_n_embd(self.model)
        self.trained_ctx = L.llama_model_n_ctx_train(self.model)
        n_ctx = min(n_ctx, self.trained_ctx)
        self.n_ctx, self.max_sequences, self.threads = n_ctx, max_sequences, threads
        self.chat_dir, self._tokenizer = chat_dir, None
        batch = min(n_ctx, BATCH)
        self._hidden = torch.empty(batch, self.hidden)      # the capture buffer: one call's outputs
        ggml = _ggml(L)
        lib = native.build([CAPTURE_SOURCE], "llamacpp-capture")
        self._capture = _Capture(ctypes.cast(ggml.ggml_get_name, ctypes.c_void_p),
                                 ctypes.cast(ggml.ggml_nbytes, ctypes.c_void_p),
                                 ctypes.cast(ggml.ggml_backend_tensor_get, ctypes.c_void_p),
                                 self._hidden.data_ptr(), self._hidden.numel() * 4, 0, 0)
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx * max_sequences, batch, batch   # cells: all sequences
        cp.n_seq_max = max_sequences
        # A cache per sequence (not llama.cpp's unified one) and the weights as stored (not
        # repacked): then a sequence's hidden states are the same, bit for bit, alone or in any
        # batch, whatever the other sequences' lengths and cuts (tests/test_exact.py). Under
        # llama.cpp's defaults they are not: in a unified cache the order of the attention's sums
        # follows the cells the batch's sequences occupy, and repacked Q4_K weights take another
        # kernel from 4 rows on (SmolLM2's states moved by up to 1% of their largest value, Gemma's
        # by 2.8 of ~25, enough to change greedy tokens), so no batched run, dense or verified,
        # reproduced a run alone. What the settings cost llama.cpp's dense decode: docs/LLAMACPP.md.
        cp.kv_unified = unified
        cp.flash_attn_type = flash_attn
        cp.n_threads = cp.n_threads_batch = threads
        self._cb = L.ggml_backend_sched_eval_callback(ctypes.cast(lib.fh_result_norm, ctypes.c_void_p).value)
        cp.cb_eval = self._cb
        cp.cb_eval_user_data = ctypes.cast(ctypes.pointer(self._capture), ctypes.c_void_p)
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise FlashHeadError("llama.cpp could not create a context")
        self._batch_size = batch
        self._batch = L.llama_batch_init(batch, 0, max_sequences)
        self._mem = L.llama_get_memory(self.ctx)
        self._head = None

    def close(self) -> None:
        L = self._L
        if getattr(self, "ctx", None):
            L.llama_batch_free(self._batch)
            L.llama_free(self.ctx)
            L.llama_model_free(self.model)
            self.ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ---- text <-> tokens -------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of `text`, control tokens written as text parsed; `add_special`: the model's BOS
        if it wants one (not for text that already carries it, e.g. a chat template's)."""
        L, raw = self._L, text.encode()
        buf = (L.llama_token * (len(raw) + 8))()
        n = L.llama_tokenize(self.vocab_ptr, raw, len(raw), buf, len(buf), add_special, True)
        if n < 0:
            raise FlashHeadError(f"text too long to tokenize ({-n} tokens)")
        return list(buf[:n])

    def detokenize(self, ids: list[int]) -> str:
        L, out = self._L, b""
        buf = ctypes.create_string_buffer(256)
        for t in ids:
            n = L.llama_token_to_piece(self.vocab_ptr, t, buf, len(buf), 0, False)
            out += buf.raw[:max(n, 0)]
        return out.decode("utf-8", errors="replace")

    def end_tokens(self) -> set[int]:
        if not hasattr(self, "_ends"):
            self._ends = {t for t in range(self.vocab) if self._L.llama_vocab_is_eog(self.vocab_ptr, t)}
        return self._ends

    def chat_tokens(self, prompt: str) -> list[int]:
        """`prompt` as a user turn in the chat template of `chat_dir`'s tokenizer, control tokens
        parsed, no extra BOS."""
        if self._tokenizer is None:
            if self.chat_dir is None:
                raise FlashHeadError("chat needs the model directory's tokenizer (its chat template)")
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.chat_dir)
        return self.tokenize(chat_text(self._tokenizer, prompt), add_special=False)

    # ---- the body --------------------------------------------------------------------------------

    def decode(self, entries: list[Entry], logits: bool = False) -> torch.Tensor:
        """Decode (token, position, sequence, output) entries: the hidden states [n_outputs, d] of
        the output entries (a view of a reused buffer, valid until the next call), or with `logits`
        llama.cpp's own dense logits [n_outputs, V] fp32. A sequence's entries are contiguous;
        sequences of unequal counts, or more than BATCH entries, go in several llama_decode calls."""
        if not entries:
            raise FlashHeadError("decode needs at least one entry")
        runs = _runs(entries)
        if len({len(r) for r in runs}) == 1 and len(entries) <= self._batch_size:
            calls = [entries]
        else:
            # llama.cpp splits a batch of unequal sequences into micro-batches of equal counts per
            # sequence, and the callback sees their outputs in micro-batch order (a short prompt's
            # last token before a long one's): one call per sequence keeps the entries' order
            calls = [r[s:s + self._batch_size] for r in runs for s in range(0, len(r), self._batch_size)]
        outs = []
        for call in calls:
            out = self._decode(call, logits)
            if out is not None:
                outs.append(out if len(calls) == 1 else out.clone())
        if not outs:
            return torch.empty(0, self.vocab if logits else self.hidden)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _decode(self, entries, logits: bool):
        L, b = self._L, self._batch
        outputs = 0
        for i, (tok, pos, seq, out) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, out
            b.seq_id[i][0] = seq
            outputs += bool(out)
        b.n_tokens = len(entries)
        cap = self._capture
        cap.active, cap.got = (0 if logits else 1), 0
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise FlashHeadError(f"llama_decode failed ({rc}): a sequence's cache of {self.n_ctx} positions is full")
        if not outputs:
            return None
        if logits:
            ptr = L.llama_get_logits(self.ctx)
            return torch.from_numpy(np.ctypeslib.as_array(ptr, (outputs, self.vocab)))
        if cap.got != outputs * self.hidden * 4:
            raise FlashHeadError(f"llama.cpp's graph gave no '{NODE}' node of {outputs} x {self.hidden} "
                                 f"fp32 (got {cap.got} bytes): this llama.cpp build is not supported "
                                 f"by the FlashHead backend")
        return self._hidden[:outputs]

    def cut(self, seq: int, position: int) -> None:
        """Drop sequence `seq`'s cache from `position` on."""
        if not self._L.llama_memory_seq_rm(self._mem, seq, position, -1):
            raise FlashHeadError(f"llama.cpp could not cut sequence {seq} at position {position}")

    def reset(self) -> None:
        """Forget every sequence (clear the cache)."""
        self._L.llama_memory_clear(self._mem, True)

    def hidden_states(self, tokens: list[int]) -> torch.Tensor:
        """The final normed hidden state [len(tokens), d] at every position of one sequence (a
        fresh cache): teacher-forced evaluation and tests."""
        self.reset()
        return self.decode([Entry(t, p, 0, True) for p, t in enumerate(tokens)]).clone()

    # ---- the head --------------------------------------------------------------------------------

    def head_weight(self):
        """The head's rows as the file stores them: Q8Rows over the GGUF's Q8_0 blocks (the native
        kernels on this backend's threads), else an fp32 tensor (a copy)."""
        if self._head is None:
            w = gguf_head(self.path, self.threads)
            if tuple(w.shape) != (self.vocab, self.hidden):
                raise FlashHeadError(f"{self.path.name}: head {list(w.shape)} does not match "
                                     f"llama.cpp's vocabulary x hidden size [{self.vocab}, {self.hidden}]")
            self._head = w
        return self._head

    def dense_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The dense head's logits [N, V] fp32 of hidden states h [N, d]: every row in one pass,
        llama.cpp's products (h quantized to Q8_0 blocks, integer block dots)."""
        return as_rows(self.head_weight()).dense(h.float())

    def dense_argmax(self, h: torch.Tensor) -> torch.Tensor:
        """The dense head's greedy tokens [N] of hidden states h [N, d] (no [N, V] logits)."""
        return as_rows(self.head_weight()).dense_argmax(h.float())

    def memory(self, head=None) -> dict:
        """Bytes: the GGUF file llama.cpp maps, the head inside it, and what a FlashHead `head`
        over this backend's rows adds (its index, and its copy of the rows in cluster order)."""
        w = self.head_weight()
        copied = isinstance(w, torch.Tensor)      # a dequantized copy, not the file's blocks
        head_bytes = None if copied else self.vocab * (self.hidden // QK) * BLOCK_BYTES
        extra = w.numel() * w.element_size() if copied else 0
        arranged = 0 if head is None else head.arranged_bytes
        if head is not None:
            extra += sum(b.numel() * b.element_size() for b in head.buffers())
        return {"gguf_bytes": self.path.stat().st_size, "head_bytes_in_gguf": head_bytes,
                "flashhead_index_bytes": extra, "flashhead_arranged_rows_bytes": arranged,
                "flashhead_extra_bytes": extra + arranged}


def _runs(entries: list[Entry]) -> list[list[Entry]]:
    """The entries of each sequence, in order; a sequence's entries must be contiguous."""
    runs, seen = [], set()
    for e in entries:
        if runs and runs[-1][0].seq == e.seq:
            runs[-1].append(e)
            continue
        if e.seq in seen:
            raise FlashHeadError(f"sequence {e.seq}'s entries are not contiguous in the batch")
        seen.add(e.seq)
        runs.append([e])
    return runs


_LOG = []   # the log callback must outlive every model


def _quiet(L) -> None:
    """Silence llama.cpp's log (errors surface as return codes, raised above)."""
    if not _LOG:
        _LOG.append(L.llama_log_callback(lambda level, text, user: None))
        L.llama_log_set(_LOG[0], None)
