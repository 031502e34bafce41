"""Reading model name, id and the final-response flag from real protobuf bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

from stagger_sidecar import wire

names = st.text(min_size=0, max_size=40)


@given(
    model=names,
    version=st.from_regex(r"[0-9]{0,3}", fullmatch=True),
    rid=names,
    payload=st.binary(max_size=2000),
)
def test_infer_header_matches_protobuf(model: str, version: str, rid: str, payload: bytes) -> None:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=rid)
    request.inputs.add(name="INPUT0", datatype="UINT8", shape=[len(payload)])
    request.raw_input_contents.append(payload)
    request.parameters["sequence_id"].int64_param = 7
    header = wire.infer_header(request.SerializeToString())
    assert header == wire.InferHeader(model, version, rid)


def test_fields_in_any_order_are_found() -> None:
    tail = pb.ModelInferRequest(id="r1").SerializeToString()
    head = pb.ModelInferRequest(model_name="m").SerializeToString()
    assert wire.infer_header(tail + head) == wire.InferHeader("m", "", "r1")


@pytest.mark.parametrize("final", [True, False, None])
def test_stream_response_final_flag(final: bool | None) -> None:
    response = pb.ModelStreamInferResponse()
    response.infer_response.id = "req-9"
    response.infer_response.model_name = "repeat"
    response.infer_response.raw_output_contents.append(b"\x00" * 64)
    if final is not None:
        response.infer_response.parameters["triton_final_response"].bool_param = final
    response.infer_response.parameters["other"].string_param = "x"
    info = wire.stream_response(response.SerializeToString())
    assert info == wire.StreamResponse("", "req-9", final)


def test_stream_error_is_a_stream_response_protobuf_reads() -> None:
    data = wire.stream_error("stagger-sidecar: busy", "req-1")
    parsed = pb.ModelStreamInferResponse.FromString(data)
    assert parsed.error_message == "stagger-sidecar: busy"
    assert parsed.infer_response.id == "req-1"
    assert wire.stream_response(data).error == "stagger-sidecar: busy"


@pytest.mark.parametrize("garbage", [b"\x0a\xff", b"\x0a\x05ab", b"\x0f", b"\xff" * 11])
def test_malformed_bytes_raise_wire_error(garbage: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.infer_header(garbage)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_wire_error(data: bytes) -> None:
    try:
        wire.infer_header(data)
        wire.stream_response(data)
    except wire.WireError:
        pass


def test_a_forwarded_http_request_keeps_its_headers_once_and_is_reframed() -> None:
    from stagger_sidecar.http_proxy import Request

    request = Request(
        method=b"POST",
        url=b"/v2/models/m/infer?x=1",
        headers=[
            (b"Host", b"sidecar:8800"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Inference-Header-Content-Length", b"12"),
            (b"Connection", b"keep-alive"),
        ],
        body=[b"abc", b"def"],
    )
    head, _, body = b"".join(request.wire(b"127.0.0.1:8000")).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v2/models/m/infer?x=1 HTTP/1.1"
    assert [line for line in lines if line.lower().startswith(b"host:")] == [
        b"Host: 127.0.0.1:8000"
    ]
    assert b"Inference-Header-Content-Length: 12" in lines
    assert b"Content-Length: 6" in lines and body == b"abcdef"
    assert not any(line.lower().startswith((b"transfer-encoding", b"connection")) for line in lines)


@given(model=names, rid=names, payload=st.binary(min_size=1, max_size=3000))
def test_request_header_from_the_first_bytes(model: str, rid: str, payload: bytes) -> None:
    """Any prefix gives either "need more" or the right header; the whole message always
    gives it."""
    request = pb.ModelInferRequest(model_name=model, id=rid)
    request.inputs.add(name="INPUT0", datatype="UINT8", shape=[len(payload)])
    request.raw_input_contents.append(payload)
    data = request.SerializeToString()
    expected = wire.InferHeader(model, "", rid)
    assert wire.request_header(data, complete=True) == expected
    for cut in range(len(data)):
        assert wire.request_header(data[:cut], complete=False) in (None, expected)
    if model:  # name first, then the tensors: a few bytes past the id are enough
        enough = len(pb.ModelInferRequest(model_name=model, id=rid).SerializeToString()) + 2
        assert wire.request_header(data[:enough], complete=False) == expected


def test_request_header_of_a_message_in_another_order_waits_for_all_of_it() -> None:
    data = pb.ModelInferRequest(id="r1").SerializeToString()
    data += pb.ModelInferRequest(model_name="m").SerializeToString()
    assert wire.request_header(data[:-1], complete=False) is None
    assert wire.request_header(data, complete=True) == wire.InferHeader("m", "", "r1")
