"""The OpenAI API's requests and errors as `flashhead serve` reads them (pydantic models).

Fields the server does not act on are accepted when they hold their neutral value (penalties 0,
no logit bias, `echo` false, `best_of` equal to `n`) and refused with a 400 otherwise, so a client
never gets an answer computed without what it asked for. Unknown fields are ignored and logged, as
vLLM's server does. Extensions: `top_k` (0 or -1: off) and `exact` (verified decoding for this
request; the server's `--exact` is the default).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_N = 16
MAX_TOP_LOGPROBS = 20


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    exact: bool | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        v = [v] if isinstance(v, str) else (v or [])
        if len(v) > 4 or any(not s for s in v):
            raise ValueError("stop: at most 4 non-empty strings")
        return v

    @model_validator(mode="after")
    def _neutral(self):
        if self.presence_penalty or self.frequency_penalty:
            raise ValueError("presence_penalty and frequency_penalty are not supported (leave them 0)")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported")
        if self.top_k == -1:
            self.top_k = 0
        return self

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @model_validator(mode="after")
    def _supported(self):
        if self.echo:
            raise ValueError("echo is not supported")
        if self.suffix:
            raise ValueError("suffix is not supported")
        if self.best_of not in (None, self.n):
            raise ValueError("best_of other than n is not supported")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: give at least one prompt")
        if self.prompt == "" or (isinstance(self.prompt, list) and "" in self.prompt):
            raise ValueError("prompt: a prompt is empty")
        return self

    def prompts(self) -> list:
        """The prompts as texts or one token-id list."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict] | None = None

    def text(self) -> str:
        c = self.content
        if isinstance(c, list):
            parts = [x.get("text", "") for x in c if x.get("type") == "text"]
            if len(parts) != len(c):
                raise ValueError("message content: only text parts are supported")
            return "".join(parts)
        return c or ""


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _supported(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    def conversation(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


def error(message: str, kind: str = "invalid_request_error", param: str | None = None,
          code: str | None = None) -> dict:
    """The OpenAI error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
