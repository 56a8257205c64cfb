"""The prompt text of a request body, for estimating the input when no usage was reported.

Reads the request shapes of the providers metered here, without knowing which one it is:

- OpenAI Chat Completions and Ollama ``/api/chat``: ``messages[].content`` (a string, or
  parts with ``text``);
- OpenAI Responses: ``instructions`` and ``input`` (a string, or items with ``content`` parts
  or function-call ``output``);
- legacy completions and Ollama ``/api/generate``: ``prompt`` and ``system``;
- Anthropic Messages: ``system`` (a string or text blocks) and ``messages[].content``
  (a string, or blocks with ``text`` or ``tool_result`` ``content``);
- Gemini: ``systemInstruction``/``system_instruction`` and ``contents[].parts[].text``.

Only text is collected (images, audio and files are not), and neither tool definitions nor
the chat template's own tokens: the estimate is a little low rather than high. A body that is
not JSON (e.g. truncated) is counted as it is.
"""

from __future__ import annotations

import json
from typing import Any, Final

_TEXT_KEYS: Final = (
    "system",
    "system_instruction",
    "systemInstruction",
    "instructions",
    "prompt",
    "input",
    "messages",
    "contents",
    "content",
    "parts",
    "text",
    "output",
)
"""Keys whose values hold prompt text, at the top level or inside messages and parts."""

_MAX_DEPTH: Final = 32


def prompt_text(request_body: bytes) -> str:
    """The text of the prompt in ``request_body``, pieces joined by newlines."""
    if not request_body.strip():
        return ""
    try:
        request = json.loads(request_body)
    except (ValueError, RecursionError):
        return request_body.decode("utf-8", "replace")
    pieces: list[str] = []
    if isinstance(request, dict):
        _collect(request, pieces, 0)
    return "\n".join(pieces)


def _collect(value: Any, pieces: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, str):
        if value:
            pieces.append(value)
    elif isinstance(value, list):
        for item in value:
            _collect(item, pieces, depth + 1)
    elif isinstance(value, dict):
        for key in _TEXT_KEYS:
            if key in value:
                _collect(value[key], pieces, depth + 1)
