"""CUDA graphs for eager callers of the decode step.

On the GPU one FlashHead step is a few tens of µs of kernels in four launches, and launching
them one by one from Python costs more than running them (H200, Llama-3.2-1B-shaped head, batch
1: docs/KERNELS.md). So an eager call captures the step once per (path, N, dtype, probes,
kernel) in a CUDA graph and replays it: the hidden states are copied into the graph's input
buffer and its output is copied out. A call made while a graph is being captured around it
(vLLM, torch.compile) runs the kernels directly. No host synchronisation either way.
"""
from __future__ import annotations

import torch

MAX_GRAPHS = 64   # distinct batch sizes kept; the oldest capture is dropped beyond


class GraphCache:
    def __init__(self):
        self._graphs: dict = {}
        self._pool = None

    def run(self, key, fn, h: torch.Tensor) -> torch.Tensor:
        """fn(h) through the graph captured for `key` (captured on first use)."""
        if torch.cuda.is_current_stream_capturing():
            return fn(h)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= MAX_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
            entry = self._graphs[key] = self._capture(fn, h)
        graph, static_h, out = entry
        static_h.copy_(h)
        graph.replay()
        return out.clone()

    def _capture(self, fn, h: torch.Tensor):
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()   # one pool: graphs replay one at a time
        static_h = h.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(static_h)                      # warm-up outside the capture: compiles the kernels
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = fn(static_h)
        return graph, static_h, out
