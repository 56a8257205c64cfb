"""Counting tokens in responses as they stream past. Knows nothing of x402."""

from x402_meter.metering.base import Meter, MeterFactory, ResponseInfo, Usage
from x402_meter.metering.openai_chat import openai_chat_meter

__all__ = ["Meter", "MeterFactory", "ResponseInfo", "Usage", "openai_chat_meter"]
