"""The core: the on-disk index, the head and its step, rows, estimates, quantization, context (torch only)."""
