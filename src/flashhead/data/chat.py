"""The `chat` domain: real questions answered by the model itself, in its own chat template.

Questions: the Debian FAQ (corpus.faq_questions), split by question like every domain is split by
document. Answers: the model's dense head, greedy, `ANSWER_TOKENS` new tokens at most, so the
dialogue is what this model says in chat. Rendered with the tokenizer's chat template (the text a
served chat model sees) and cached per model in the flashhead cache, since answering costs minutes.
"""
from __future__ import annotations

import hashlib
import json

import torch

from ..core.config import FlashHeadError
from ..core.cache import cache_root
from .corpus import _in_split, faq_questions

ANSWER_TOKENS = 96
_VERSION = 1   # bump when the rendering changes


def _cache_path(model, split: str):
    # keyed by the model's own head (a sample of its rows), not its path: a FlashHead directory and
    # the model it was built from give the same dense answers
    w = model.get_output_embeddings().weight.detach()
    sample = w[:: max(1, w.shape[0] // 256)].float().cpu().numpy().tobytes()
    head = hashlib.sha256(sample).hexdigest()[:16]
    key = hashlib.sha256(f"{head}:{split}:{ANSWER_TOKENS}:{_VERSION}".encode()).hexdigest()[:12]
    return cache_root() / "chat" / f"{key}.json"


def control_token_ids(tokenizer) -> list[int]:
    """Token ids that end a turn or a sequence, or frame one, in this tokenizer's chat template
    (EOS, end-of-turn, start-of-turn...): the special tokens the rendered template contains."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                                             tokenize=False)
        special = set(tokenizer.all_special_ids)
        ids |= {i for i in tokenizer(text, add_special_tokens=False)["input_ids"] if i in special}
        for t in ("<end_of_turn>", "<start_of_turn>", "<|im_end|>", "<|im_start|>", "<|eot_id|>"):
            i = tokenizer.convert_tokens_to_ids(t)
            if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id:
                ids.add(i)
    return sorted(ids)


@torch.inference_mode()
def texts(model, tokenizer, split: str = "eval", batch: int = 8, progress: bool = False) -> list[str]:
    """Rendered dialogues (question + the model's greedy dense answer) of one split."""
    from tqdm.auto import tqdm

    if not getattr(tokenizer, "chat_template", None):
        raise FlashHeadError("the chat domain needs a tokenizer with a chat template")
    path = _cache_path(model, split)
    if path.is_file():
        return json.loads(path.read_text())
    questions = [q for q in faq_questions() if _in_split(q, split)]
    lm = model.get_output_embeddings()
    flash_on = getattr(lm, "use_flashhead", None)
    if flash_on is not None:
        lm.use_flashhead = False                 # answers come from the dense head
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = set(control_token_ids(tokenizer)) | {pad}
    out = []
    try:
        for s in tqdm(range(0, len(questions), batch), desc="answering chat questions", disable=not progress):
            chats = [[{"role": "user", "content": q}] for q in questions[s:s + batch]]
            prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            gen = model.generate(**enc, max_new_tokens=ANSWER_TOKENS, do_sample=False, pad_token_id=pad)
            for p, g in zip(prompts, gen[:, enc["input_ids"].shape[1]:].tolist()):
                end = next((i for i, t in enumerate(g) if t in stop), len(g) - 1)
                out.append(p + tokenizer.decode(g[:end + 1], skip_special_tokens=False))
    finally:
        tokenizer.padding_side = side
        if flash_on is not None:
            lm.use_flashhead = flash_on
    bos = tokenizer.bos_token
    if bos and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:   # the tokenizer adds it
        out = [t[len(bos):] if t.startswith(bos) else t for t in out]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, ensure_ascii=False))
    return out
