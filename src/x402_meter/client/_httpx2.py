"""The paying clients for packages built on ``httpx2`` (the ``anthropic`` package: 1.17
and 2.x checked).

``httpx2`` is a successor of httpx with the same transport interface, and such packages
refuse an ``httpx.Client``. The bridge here is an ``httpx2`` transport that sends each
request through a paying client (so the wallet, its caps and its receipts are the same)
and hands the answer back as it streams, headers and bytes unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    import httpx2


def sync_client(paying: httpx.Client) -> httpx2.Client:
    """An ``httpx2.Client`` that sends everything through ``paying``."""
    import httpx2

    class _Stream(httpx2.SyncByteStream):
        def __init__(self, response: httpx.Response) -> None:
            self.response = response

        def __iter__(self) -> Iterator[bytes]:
            yield from self.response.iter_raw()

        def close(self) -> None:
            self.response.close()

    class _Bridge(httpx2.BaseTransport):
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            sent = paying.build_request(
                request.method,
                str(request.url),
                headers=request.headers.raw,
                content=request.read(),
            )
            response = paying.send(sent, stream=True)
            return httpx2.Response(
                response.status_code, headers=response.headers.raw, stream=_Stream(response)
            )

    return httpx2.Client(transport=_Bridge(), timeout=paying.timeout.read)


def async_client(paying: httpx.AsyncClient) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` that sends everything through ``paying``."""
    import httpx2

    class _Stream(httpx2.AsyncByteStream):
        def __init__(self, response: httpx.Response) -> None:
            self.response = response

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self.response.aiter_raw():
                yield chunk

        async def aclose(self) -> None:
            await self.response.aclose()

    class _Bridge(httpx2.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            sent = paying.build_request(
                request.method,
                str(request.url),
                headers=request.headers.raw,
                content=await request.aread(),
            )
            response = await paying.send(sent, stream=True)
            return httpx2.Response(
                response.status_code, headers=response.headers.raw, stream=_Stream(response)
            )

    return httpx2.AsyncClient(transport=_Bridge(), timeout=paying.timeout.read)
