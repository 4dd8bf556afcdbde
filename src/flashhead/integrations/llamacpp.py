"""llama.cpp integration: the model's body runs in llama.cpp, FlashHead picks the tokens.

    model = LlamaCpp("gemma-3-270m-q4_k_m.gguf", "models/gemma-3-270m-flashhead")
    out = model.generate(["The capital of France is"], max_new_tokens=20)

llama.cpp (through llama-cpp-python's low-level API) evaluates the GGUF file's graph; an eval
callback (`llama_context_params.cb_eval`, written in C: kernels/q8_0.c `fh_result_norm`) observes
only the node named `result_norm`, the final normed hidden state [d, n_outputs], copies it out and
stops the graph there: the dense output projection is never computed, the KV cache is written as
usual. FlashHead then scores the hidden states against the head rows **in the GGUF file's own
Q8_0 blocks** (q8rows.py: memory-mapped, no dense copy; other head types are dequantized once, and
say so) and returns the greedy tokens or full-vocabulary logits, which the sampler here turns into
tokens fed back through `llama_decode`. `dense=True` runs llama.cpp's own head on the same context
(the comparison every benchmark and test makes).

The assets come from `flashhead build` on the same GGUF (or its HF conversion: the same head
values); the head's fingerprint refuses a GGUF of another model. A llama.cpp whose graph has no
`result_norm` node stops with an error, never a silent dense run.
"""
from __future__ import annotations

import ctypes
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..config import FlashHeadError
from ..head import FlashHead
from ..layout import load_assets
from ..q8rows import Q8Rows
from ..sampling import Sampler

# llama-cpp-python versions this integration is tested with (node names and the low-level API).
SUPPORTED = ((0, 3, 36), (0, 4, 0))      # [low, high)
NODE = "result_norm"
GGML_TYPE_Q8_0 = 8


class _Capture(ctypes.Structure):
    """Mirrors `struct fh_capture` in kernels/q8_0.c."""
    _fields_ = [("get_name", ctypes.c_void_p), ("nbytes", ctypes.c_void_p),
                ("tensor_get", ctypes.c_void_p), ("dst", ctypes.c_void_p),
                ("capacity", ctypes.c_int64), ("got", ctypes.c_int64), ("active", ctypes.c_int32)]


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise FlashHeadError("the llama.cpp backend needs llama-cpp-python: pip install "
                             "'flashhead[llamacpp]' (builds llama.cpp, ~10 minutes on 2 cores)") from None
    version = tuple(int(x) for x in llama_cpp.__version__.split(".")[:3])
    if not SUPPORTED[0] <= version < SUPPORTED[1]:
        raise FlashHeadError(f"llama-cpp-python {llama_cpp.__version__} is untested with flashhead "
                             f"(tested: >={'.'.join(map(str, SUPPORTED[0]))},"
                             f"<{'.'.join(map(str, SUPPORTED[1]))})")
    return llama_cpp


def _ggml(llama_cpp) -> ctypes.CDLL:
    lib = Path(llama_cpp.__file__).parent / "lib"
    for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
        if (lib / name).is_file():
            return ctypes.CDLL(str(lib / name))
    raise FlashHeadError(f"no ggml-base library next to llama-cpp-python in {lib}")


def gguf_head(path: Path):
    """The head of a GGUF model: `output.weight`, else the tied `token_embd.weight`. Q8_0 stays in
    the file's blocks (Q8Rows over the memory map); any other type is dequantized to fp32 once."""
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
            return Q8Rows(torch.from_numpy(np.asarray(t.data)).view(vocab, -1), hidden)
    from gguf.quants import dequantize

    print(f"note: {path.name}'s head is {t.tensor_type.name}; FlashHead keeps an fp32 copy "
          f"({vocab * hidden * 4 / 2**20:.0f} MiB)", flush=True)
    return torch.from_numpy(dequantize(np.asarray(t.data), t.tensor_type).copy()).view(vocab, hidden)


class LlamaCpp:
    """A GGUF model in llama.cpp with a FlashHead head (and llama.cpp's own dense head on demand).

    `model_dir`: a FlashHead directory built for this GGUF (its assets are used; None = dense only).
    `max_sequences`: sequences decoded together in one batch (generate's prompts).
    `arrange`: keep the head's Q8_0 rows in cluster order (Q8Rows.arrange: a copy of the head's
    Q8_0 bytes, stage 2 about 2x faster); False reads the file's rows in place (no copy)."""

    def __init__(self, gguf, model_dir=None, probes: int | None = None, n_ctx: int = 2048,
                 threads: int | None = None, max_sequences: int = 8, arrange: bool = True):
        L = self._L = _llama_cpp()
        self.path = Path(gguf)
        if not self.path.is_file():
            raise FlashHeadError(f"{self.path}: no such GGUF file")
        index = load_assets(Path(model_dir)) if model_dir is not None else None
        threads = threads or min(os.cpu_count() or 1, torch.get_num_threads())
        L.llama_backend_init()
        _quiet(L)
        self.model = L.llama_model_load_from_file(str(self.path).encode(), L.llama_model_default_params())
        if not self.model:
            raise FlashHeadError(f"llama.cpp could not load {self.path}")
        self.vocab_ptr = L.llama_model_get_vocab(self.model)
        self.vocab = L.llama_vocab_n_tokens(self.vocab_ptr)
        self.hidden = L.llama_model_n_embd(self.model)
        self.n_ctx, self.max_sequences = n_ctx, max_sequences
        # the capture buffer: hidden states of up to n_ctx outputs (a whole prompt, for tests)
        self._hidden = torch.empty(n_ctx, self.hidden)
        ggml = _ggml(L)
        from ..kernels.native import library

        native = library()
        self._capture = _Capture(ctypes.cast(ggml.ggml_get_name, ctypes.c_void_p),
                                 ctypes.cast(ggml.ggml_nbytes, ctypes.c_void_p),
                                 ctypes.cast(ggml.ggml_backend_tensor_get, ctypes.c_void_p),
                                 self._hidden.data_ptr(), self._hidden.numel() * 4, 0, 0)
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, n_ctx, n_ctx
        cp.n_seq_max = max_sequences
        cp.kv_unified = True     # one cache for all sequences: a batch keeps its order in one graph
        cp.n_threads = cp.n_threads_batch = threads
        self._cb = L.ggml_backend_sched_eval_callback(ctypes.cast(native.fh_result_norm, ctypes.c_void_p).value)
        cp.cb_eval = self._cb
        cp.cb_eval_user_data = ctypes.cast(ctypes.pointer(self._capture), ctypes.c_void_p)
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise FlashHeadError("llama.cpp could not create a context")
        self._batch = L.llama_batch_init(n_ctx, 0, max_sequences)
        self.threads = threads
        self.head = None
        if index is not None:
            head = gguf_head(self.path)
            if tuple(head.shape) != (self.vocab, self.hidden):
                raise FlashHeadError(f"{self.path.name}: head {list(head.shape)} does not match "
                                     f"llama.cpp's vocabulary x hidden size [{self.vocab}, {self.hidden}]")
            self.head = FlashHead(head, index, probes)
            if isinstance(head, Q8Rows):
                head.threads = threads
                if arrange:
                    head.arrange(self.head.block_ids)

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

    def is_end(self, token: int) -> bool:
        return bool(self._L.llama_vocab_is_eog(self.vocab_ptr, token))

    # ---- the step --------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every sequence (clear the KV cache)."""
        self._L.llama_memory_clear(self._L.llama_get_memory(self.ctx), True)

    def decode(self, tokens: list[tuple[int, int, int, bool]], dense: bool) -> torch.Tensor:
        """One llama_decode of (token, position, sequence, output) entries. FlashHead: the hidden
        states [n_outputs, d] of the output entries (a view of a reused buffer); dense: llama.cpp's
        logits [n_outputs, V] fp32."""
        L, b = self._L, self._batch
        if not 0 < len(tokens) <= self.n_ctx:
            raise FlashHeadError(f"a batch holds 1..{self.n_ctx} tokens, got {len(tokens)}")
        outputs = 0
        for i, (tok, pos, seq, out) in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, out
            b.seq_id[i][0] = seq
            outputs += bool(out)
        b.n_tokens = len(tokens)
        cap = self._capture
        cap.active, cap.got = (0 if dense else 1), 0
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise FlashHeadError(f"llama_decode failed ({rc}): context of {self.n_ctx} tokens full?")
        if dense:
            ptr = L.llama_get_logits(self.ctx)
            return torch.from_numpy(np.ctypeslib.as_array(ptr, (outputs, self.vocab)))
        if cap.got != outputs * self.hidden * 4:
            raise FlashHeadError(f"llama.cpp's graph gave no '{NODE}' node of {outputs} x {self.hidden} "
                                 f"fp32 (got {cap.got} bytes): this llama.cpp build is not supported "
                                 f"by the FlashHead backend")
        return self._hidden[:outputs]

    # ---- generation ------------------------------------------------------------------------------

    def generate(self, prompts: list, max_new_tokens: int = 40, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                 dense: bool = False, logprobs: bool = False) -> dict:
        """Generate for a batch of prompts (texts or token-id lists), all sequences in one llama.cpp
        batch per step. temperature 0 = greedy. Returns texts, token ids, timing; `logprobs`: the
        log-probability (T = 1, full vocabulary) of each chosen token, as vLLM's logprobs."""
        if self.head is None and not dense:
            raise FlashHeadError("this model was opened without FlashHead assets; pass dense=True")
        if not prompts or len(prompts) > self.max_sequences:
            raise FlashHeadError(f"give 1..{self.max_sequences} prompts, got {len(prompts)}")
        ids = [self.tokenize(p) if isinstance(p, str) else list(p) for p in prompts]
        if any(not x for x in ids):
            raise FlashHeadError("a prompt is empty (no tokens)")
        if sum(len(x) + max_new_tokens for x in ids) > self.n_ctx:   # one cache for all sequences
            raise FlashHeadError(f"prompts + new tokens of all sequences exceed the context "
                                 f"({self.n_ctx} tokens)")
        sampler = Sampler(temperature, top_p, top_k, seed)
        self.head_seconds, self._logprobs = 0.0, [] if logprobs else None
        self.reset()
        t0 = time.perf_counter()
        entries = [(t, p, s, p == len(x) - 1) for s, x in enumerate(ids) for p, t in enumerate(x)]
        nxt = self._pick(self.decode(entries, dense), dense, sampler)
        t_prefill = time.perf_counter()
        new = [[] for _ in ids]
        lps = [[] for _ in ids]
        live = list(range(len(ids)))
        for step in range(max_new_tokens):
            for j, (s, t) in enumerate(zip(live, nxt)):
                new[s].append(t)
                if logprobs:
                    lps[s].append(self._logprobs[j])
            live = [s for s in live if not self.is_end(new[s][-1])]
            if not live or step == max_new_tokens - 1:
                break
            entries = [(new[s][-1], len(ids[s]) + len(new[s]) - 1, s, True) for s in live]
            nxt = self._pick(self.decode(entries, dense), dense, sampler)
        t1 = time.perf_counter()
        count = sum(map(len, new))
        return {"texts": [self.detokenize([t for t in x if not self.is_end(t)]) for x in new],
                "token_ids": new, "new_tokens": [len(x) for x in new],
                "prefill_seconds": t_prefill - t0, "seconds": t1 - t0,
                "tokens_per_second": count / (t1 - t0), "head_seconds": self.head_seconds,
                "decode_tokens_per_second": (count - len(ids)) / max(t1 - t_prefill, 1e-9),
                **({"logprobs": lps} if logprobs else {})}

    def _pick(self, out: torch.Tensor, dense: bool, sampler: "Sampler") -> list[int]:
        t0 = time.perf_counter()
        if dense or self._logprobs is not None or not sampler.greedy:
            logits = out if dense else self.head(out)       # FlashHead: full-vocabulary logits
            ids = sampler(logits)
            if self._logprobs is not None:
                self._logprobs = logits.float().log_softmax(-1).gather(1, ids[:, None]).squeeze(1).tolist()
        else:
            ids = self.head.greedy(out)                     # the fast path: no [N, V] tensor
        self.head_seconds += time.perf_counter() - t0
        return ids.tolist()

    def hidden_states(self, tokens: list[int]) -> torch.Tensor:
        """The final normed hidden state [len(tokens), d] at every position of one sequence (a
        fresh cache): what FlashHead reads, for evaluation and tests."""
        self.reset()
        return self.decode([(t, p, 0, True) for p, t in enumerate(tokens)], dense=False).clone()

    def memory(self) -> dict:
        """Bytes: the GGUF file llama.cpp maps, the head inside it, and what FlashHead adds."""
        extra, arranged, head_bytes = 0, 0, None
        if self.head is not None:
            w = self.head.weight
            extra = sum(b.numel() * b.element_size() for b in self.head.buffers())
            if isinstance(w, Q8Rows):
                head_bytes = self.vocab * w.blocks.shape[1]
                if w.row_of is not None:
                    arranged = w.nbytes + w.row_of.numel() * 8
            else:
                extra += w.numel() * w.element_size()
        return {"gguf_bytes": self.path.stat().st_size, "head_bytes_in_gguf": head_bytes,
                "flashhead_index_bytes": extra, "flashhead_arranged_rows_bytes": arranged,
                "flashhead_extra_bytes": extra + arranged}


_LOG = []   # the log callback must outlive every model


def _quiet(L) -> None:
    """Silence llama.cpp's log (errors surface as return codes, raised above)."""
    if not _LOG:
        _LOG.append(L.llama_log_callback(lambda level, text, user: None))
        L.llama_log_set(_LOG[0], None)
