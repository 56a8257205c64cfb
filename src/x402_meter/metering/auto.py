"""The default meter factory: the body format by content type, the provider by its events.

No configuration: an OpenAI Chat Completions chunk (``object: chat.completion.chunk``), a
Responses event (``type: response.*``), an Anthropic ``message_start``, a Gemini object with
``candidates``/``usageMetadata`` or an Ollama object with ``done`` names its provider, and
that provider's extractor reads the usage. See :class:`~x402_meter.metering.meter.BodyMeter`
for what happens to a body of no known provider.
"""

from __future__ import annotations

from typing import Any, Final

from x402_meter.metering.anthropic import AnthropicUsage
from x402_meter.metering.base import Meter, ResponseInfo
from x402_meter.metering.extractor import UsageExtractor
from x402_meter.metering.gemini import GeminiUsage
from x402_meter.metering.meter import BodyMeter
from x402_meter.metering.ollama import OllamaUsage
from x402_meter.metering.openai_chat import OpenAIChatUsage
from x402_meter.metering.openai_responses import OpenAIResponsesUsage
from x402_meter.metering.tokenizer import DEFAULT_ENCODING

EXTRACTORS: Final[tuple[type[UsageExtractor], ...]] = (
    OpenAIResponsesUsage,  # before Anthropic: both use "type"; only Responses has "response."
    OpenAIChatUsage,
    AnthropicUsage,
    GeminiUsage,
    OllamaUsage,
)
"""The providers recognised, in the order they are tried on an event."""


def recognise(event: dict[str, Any]) -> type[UsageExtractor] | None:
    """The extractor for the provider whose format ``event`` is in, if any."""
    for extractor in EXTRACTORS:
        if extractor.recognises(event):
            return extractor
    return None


def auto_meter(
    response: ResponseInfo, *, encoding: str = DEFAULT_ENCODING, accelerate: bool = True
) -> Meter:
    """A meter for any of the supported providers and body formats (the default factory).

    ``encoding`` is the tokenizer encoding of the fallback (``o200k_base`` or
    ``cl100k_base``); bind another one with ``functools.partial(auto_meter, encoding=...)``.
    ``accelerate=False`` runs only the plain readers (see
    :class:`~x402_meter.metering.meter.BodyMeter`): the same counts, slower.
    """
    return BodyMeter(response, recognise=recognise, encoding=encoding, accelerate=accelerate)
