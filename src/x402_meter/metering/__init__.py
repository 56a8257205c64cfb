"""Counting tokens in responses as they stream past. Knows nothing of x402.

A :class:`Meter` is fed the response body as it is forwarded and gives a :class:`Usage` at
the end. :func:`auto_meter`, the default factory, reads SSE, NDJSON and JSON bodies (gzip or
deflate too), recognises OpenAI Chat Completions and Responses, Anthropic Messages, Google
Gemini, Ollama and OpenAI-compatible servers (vLLM, llama.cpp) by their events, and takes
their own usage reports. Where a side was not reported (a stream cut short, a provider that
reports nothing), it is estimated: the output from the text that went out, the input from the
request body, with an offline tokenizer exact to tiktoken's ``o200k_base`` (or
``cl100k_base``) when the ``tokenizer`` extra is installed, else about four bytes per token.
"""

from x402_meter.metering.auto import auto_meter
from x402_meter.metering.base import Meter, MeterFactory, ResponseInfo, Usage, UsageSource
from x402_meter.metering.openai_chat import openai_chat_meter
from x402_meter.metering.tokenizer import (
    DEFAULT_ENCODING,
    Tokenizer,
    TokenizerUnavailableError,
    count_tokens,
    estimate_tokens,
    get_tokenizer,
)

__all__ = [
    "DEFAULT_ENCODING",
    "Meter",
    "MeterFactory",
    "ResponseInfo",
    "Tokenizer",
    "TokenizerUnavailableError",
    "Usage",
    "UsageSource",
    "auto_meter",
    "count_tokens",
    "estimate_tokens",
    "get_tokenizer",
    "openai_chat_meter",
]
