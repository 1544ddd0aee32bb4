"""Request bytes that are not a valid protobuf message answer INVALID_ARGUMENT, on every service.

grpc parses each request with the method's deserializer before the servicer runs, and when the
bytes are no valid message (corrupt wire format, a truncated field, invalid UTF-8 in a string)
it answers UNKNOWN, with the parser's exception class and message as details. `ParsingServer`
stands in for the server while services register: every method handler it passes on receives
the raw bytes and parses them itself, answering INVALID_ARGUMENT when they do not parse.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError


def _type_name(parse: Callable[[bytes], Any]) -> str:
    descriptor = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request"))


Guard = Callable[[Any], Awaitable[None]]
"""Called with the call's context before a request that does not parse is refused: it aborts the
call itself when the caller must be refused first (authentication comes before validation)."""


async def _no_guard(context: Any) -> None:
    return None


def parsing_handler(handler: Any, guard: Guard = _no_guard) -> Any:
    """The same method handler, but parsing the request bytes itself (None passes through)."""
    parse = getattr(handler, "request_deserializer", None)
    if parse is None:
        return handler
    detail = f"the request is not a valid {_type_name(parse)} message"

    async def parsed(raw: bytes, context: Any) -> Any:
        try:
            return parse(raw)
        except DecodeError:
            await guard(context)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, detail)

    async def requests(raw_iterator: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
        async for raw in raw_iterator:
            yield await parsed(raw, context)

    def wrap(behavior: Callable[..., Any], first: Callable[[Any, Any], Any]) -> Callable[..., Any]:
        # grpc tells a streaming response by the behaviour's kind, so the wrapper keeps it.
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                async for reply in behavior(await first(request, context), context):
                    yield reply

            return stream

        async def call(request: Any, context: Any) -> Any:
            return await behavior(await first(request, context), context)

        return call

    async def as_is(iterator: Any, context: Any) -> Any:
        return requests(iterator, context)

    if handler.unary_unary is not None:  # the hot path: no extra coroutine
        behavior = handler.unary_unary

        async def unary_unary(raw: bytes, context: Any) -> Any:
            try:
                request = parse(raw)
            except DecodeError:
                await guard(context)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, detail)
            return await behavior(request, context)

        return handler._replace(unary_unary=unary_unary, request_deserializer=None)
    if handler.unary_stream is not None:
        return handler._replace(unary_stream=wrap(handler.unary_stream, parsed), request_deserializer=None)
    if handler.stream_unary is not None:
        return handler._replace(stream_unary=wrap(handler.stream_unary, as_is), request_deserializer=None)
    return handler._replace(stream_stream=wrap(handler.stream_stream, as_is), request_deserializer=None)


class _ParsingGenericHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, inner: Any, guards: Mapping[str, Guard]) -> None:
        self._inner = inner
        self._guards = guards
        self._handlers: dict[str, Any] = {}

    def service(self, handler_call_details: Any) -> Any:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            found = self._inner.service(handler_call_details)
            if found is None:  # not this service's: nothing is kept for unknown names
                return None
            service = method.split("/")[1] if method.count("/") == 2 else ""
            handler = self._handlers[method] = parsing_handler(found, self._guards.get(service, _no_guard))
        return handler


class ParsingServer:
    """Pass to the generated `add_*Servicer_to_server` functions instead of the grpc.aio server.

    `guards`: by full service name, what runs before an unparsable request of that service is
    refused (the others are refused at once)."""

    def __init__(self, server: Any, guards: Mapping[str, Guard] | None = None) -> None:
        self._server = server
        self._guards = dict(guards or {})

    def add_generic_rpc_handlers(self, generic_handlers: Iterable[Any]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_ParsingGenericHandler(h, self._guards) for h in generic_handlers))

    def add_registered_method_handlers(self, service_name: str, method_handlers: Mapping[str, Any]) -> None:
        guard = self._guards.get(service_name, _no_guard)
        handlers = {name: parsing_handler(handler, guard) for name, handler in method_handlers.items()}
        self._server.add_registered_method_handlers(service_name, handlers)
