"""Plain HTTP answers (JSON bodies) for the REST and control handlers."""

from __future__ import annotations

import contextlib
from http import HTTPStatus
from typing import Any

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Response


def json_response(status: int, body: Any, extra: tuple[tuple[str, str], ...] = ()) -> Response:
    data = orjson.dumps(body)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                       ("Connection", "close"), *extra])
    with contextlib.suppress(ValueError):
        return Response(status, HTTPStatus(status).phrase, headers, data)
    return Response(status, "Error", headers, data)


def bytes_response(status: int, data: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data))), ("Connection", "close")])
    return Response(status, HTTPStatus(status).phrase, headers, data)


def text(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def error(code: int, msg: str, status: int = 400) -> Response:
    """Binance's error body: {"code": -1121, "msg": "Invalid symbol."}."""
    return json_response(status, {"code": code, "msg": msg})
