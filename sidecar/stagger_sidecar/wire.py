"""The few protobuf fields the gRPC proxy reads from KServe v2 messages, read straight from
the wire bytes: a full parse would copy every tensor (``raw_input_contents``) for three
short strings. Length-delimited fields are skipped without copying.

Field numbers are from Triton's ``grpc_service.proto``:
``ModelInferRequest`` / ``ModelInferResponse``: 1 model_name, 2 model_version, 3 id,
4 parameters (map<string, InferParameter>); ``ModelStreamInferResponse``: 1 error_message,
2 infer_response; ``InferParameter``: 1 bool_param.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

VARINT, I64, LEN, I32 = 0, 1, 2, 5
FINAL_RESPONSE = "triton_final_response"


class WireError(ValueError):
    """Not a well-formed protobuf message."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _value(buf: memoryview, pos: int, wire_type: int) -> tuple[memoryview | int, int]:
    """The value of a field whose key ends at ``pos``, and where the next field starts."""
    if wire_type == VARINT:
        return _varint(buf, pos)
    if wire_type == LEN:
        size, pos = _varint(buf, pos)
    elif wire_type in (I64, I32):
        size = 8 if wire_type == I64 else 4
    else:
        raise WireError(f"unsupported wire type {wire_type}")
    if pos + size > len(buf):
        raise WireError("field runs past the message")
    return buf[pos : pos + size], pos + size


def fields(data: bytes | memoryview) -> Iterator[tuple[int, int, memoryview | int]]:
    """(field number, wire type, value) for each top-level field: a view for
    length-delimited and fixed-width fields, an int for varints."""
    buf = memoryview(data)
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        value, pos = _value(buf, pos, key & 7)
        yield key >> 3, key & 7, value


def _text(value: memoryview | int) -> str:
    if isinstance(value, int):
        raise WireError("expected a string field")
    return bytes(value).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class InferHeader:
    """What the gate needs from a ``ModelInferRequest`` (or the head of a response)."""

    model: str = ""
    version: str = ""
    id: str = ""


def infer_header(data: bytes | memoryview) -> InferHeader:
    found: dict[int, str] = {}
    for number, wire_type, value in fields(data):
        if number in (1, 2, 3) and wire_type == LEN:
            found[number] = _text(value)
            if len(found) == 3:
                break
    return _header(found)


def request_header(data: bytes | memoryview, *, complete: bool) -> InferHeader | None:
    """The header of a ``ModelInferRequest`` from the first bytes of it, or None when they
    are too few to tell yet. Serializers write fields in number order, so name, version and
    id come before the tensors and a few hundred bytes suffice; a message written in
    another order is read once ``complete``."""
    if complete:
        return infer_header(data)
    buf = memoryview(data)
    found: dict[int, str] = {}
    pos = 0
    try:
        while pos < len(buf):
            key, pos = _varint(buf, pos)
            if key >> 3 > 3:  # past the header fields
                return _header(found) if 1 in found else None
            value, pos = _value(buf, pos, key & 7)
            found[key >> 3] = _text(value)
    except WireError:  # cut mid-field: more bytes are coming
        return None
    return None  # cut at a field boundary: version or id may follow


def _header(found: dict[int, str]) -> InferHeader:
    return InferHeader(found.get(1, ""), found.get(2, ""), found.get(3, ""))


@dataclass(frozen=True)
class StreamResponse:
    """What the proxy needs from a ``ModelStreamInferResponse``."""

    error: str
    id: str
    final: bool | None  # None: the response carries no final flag (one response per request)


def stream_response(data: bytes | memoryview) -> StreamResponse:
    error, id_, final = "", "", None
    for number, wire_type, value in fields(data):
        if number == 1 and wire_type == LEN:
            error = _text(value)
        elif number == 2 and wire_type == LEN and not isinstance(value, int):
            for n, wt, v in fields(value):
                if n == 3 and wt == LEN:
                    id_ = _text(v)
                elif n == 4 and wt == LEN and not isinstance(v, int):
                    flag = _final_flag(v)
                    if flag is not None:
                        final = flag
    return StreamResponse(error, id_, final)


def _final_flag(entry: memoryview) -> bool | None:
    key, value = "", None
    for n, wt, v in fields(entry):
        if n == 1 and wt == LEN:
            key = _text(v)
        elif n == 2 and wt == LEN and not isinstance(v, int):
            value = next((bool(b) for m, t, b in fields(v) if m == 1 and t == VARINT), False)
    return value if key == FINAL_RESPONSE else None


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def stream_error(message: str, request_id: str = "") -> bytes:
    """A ``ModelStreamInferResponse`` carrying only an error: how Triton itself reports a
    failed request without ending the stream. The request's id goes along when it had one."""
    text = message.encode()
    out = b"\x0a" + _encode_varint(len(text)) + text
    if request_id:
        rid = request_id.encode()
        inner = b"\x1a" + _encode_varint(len(rid)) + rid
        out += b"\x12" + _encode_varint(len(inner)) + inner
    return out
