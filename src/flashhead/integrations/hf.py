"""transformers integration: swap a causal LM's `lm_head` for FlashHead.

    model, tok = flashhead.integrations.hf.load("models/gemma-3-270m-flashhead")
    model.generate(**tok("The capital of France is", return_tensors="pt"), max_new_tokens=20)

Importing this module registers the FlashHead model types with transformers' Auto API
(hf_auto.py): `AutoModelForCausalLM.from_pretrained(dir)` and `pipeline("text-generation",
model=dir)` then load a FlashHead directory with its FlashHead, and `save_pretrained` writes one.
Or, on a model you loaded yourself:

    flashhead.integrations.hf.apply(model, ClusterIndex.load(dir / "flash_head_assets"))

The new `lm_head` keeps the model's own weight Parameter (tied or not) and returns
full-vocabulary logits, so greedy, temperature, top-k, top-p, seeds and logits processors of
`generate()` work unchanged. Tested on the Llama and Gemma3 families.
On the CPU FlashHead also keeps a copy of the head's rows in cluster order (head.py `arrange`, stage
2 about twice as fast; logged with its size); `arrange=False` / `flash_head_arrange=False` keeps none.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.layout import CACHE_KEY, base_model_type, load_assets, read_config
from . import hf_auto   # registers the FlashHead model types with the Auto API
from .hf_head import CROSSOVER, FlashHeadLMHead, apply   # noqa: F401  (the public API: hf.apply, ...)

def load(model_dir, dense: bool = False, probes: int | None = None, dtype=torch.float32,
         device: str | None = None, arrange: bool | None = None):
    """Load a FlashHead model directory in transformers -> (model, tokenizer).

    `dense=True` loads the same model with its dense head (an explicit choice, for comparison;
    on a plain model directory too). `arrange=False`: no cluster-ordered copy of the head's rows.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    config = read_config(model_dir)                               # a clear error if not a model dir
    if dense and CACHE_KEY not in config:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    else:
        if not dense:
            load_assets(model_dir)                                # fail fast, before the model load
        flash, base = hf_auto.classes(base_model_type(config) or "")
        # the FlashHead config class, also for directories built before the flashhead_ model types
        cfg_dict, _ = flash.config_class.get_config_dict(model_dir)
        cfg = flash.config_class.from_dict({**cfg_dict, "model_type": flash.config_class.model_type})
        kw = {} if dense else {hf_auto.PROBES_KEY: probes, hf_auto.ARRANGE_KEY: arrange}
        model = (base if dense else flash).from_pretrained(model_dir, config=cfg, dtype=dtype, **kw)
    if device:
        model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer
