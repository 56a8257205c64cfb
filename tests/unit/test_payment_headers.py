"""decode_payment: strict, bounded decoding of PAYMENT-SIGNATURE / X-PAYMENT header values."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from x402.http.utils import encode_payment_signature_header
from x402.schemas import PaymentPayload, PaymentRequirements
from x402.schemas.v1 import PaymentPayloadV1

from x402_meter.errors import PaymentError
from x402_meter.protocol.headers import DEFAULT_MAX_HEADER_BYTES, decode_payment

REQUIREMENTS = PaymentRequirements(
    scheme="upto",
    network="eip155:84532",
    asset="0x" + "11" * 20,
    amount="8192",
    pay_to="0x" + "22" * 20,
    max_timeout_seconds=300,
    extra={"name": "USD Coin", "version": "2", "assetTransferMethod": "permit2"},
)
INNER: dict[str, Any] = {
    "permit2Authorization": {"from": "0x" + "33" * 20, "nonce": "7", "deadline": "1700000300"},
    "signature": "0x" + "ab" * 65,
}
V2 = PaymentPayload(accepted=REQUIREMENTS, payload=INNER)
V1 = PaymentPayloadV1(scheme="upto", network="base-sepolia", payload=INNER)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


def b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def b64_json(value: Any) -> bytes:
    return b64(json.dumps(value).encode())


def v2_dict(**changes: Any) -> dict[str, Any]:
    data = V2.model_dump(by_alias=True, exclude_none=True)
    data.update(changes)
    return data


def decoded_or_error(value: bytes) -> PaymentPayload | PaymentPayloadV1 | PaymentError:
    try:
        return decode_payment(value)
    except PaymentError as error:
        return error


def refusal(value: bytes, **kwargs: Any) -> PaymentError:
    with pytest.raises(PaymentError) as caught:
        decode_payment(value, **kwargs)
    assert caught.value.status_code == 400
    return caught.value


def test_a_v2_payload_round_trips_through_the_sdk_encoder() -> None:
    assert decode_payment(encode_payment_signature_header(V2).encode()) == V2


def test_a_v1_payload_round_trips_through_the_sdk_encoder() -> None:
    decoded = decode_payment(encode_payment_signature_header(V1).encode())
    assert isinstance(decoded, PaymentPayloadV1)
    assert decoded == V1


def test_surrounding_whitespace_is_ignored() -> None:
    assert decode_payment(b" " + encode_payment_signature_header(V2).encode() + b"\r\n") == V2


def test_a_header_over_the_size_limit_is_too_large() -> None:
    assert refusal(b"A" * (DEFAULT_MAX_HEADER_BYTES + 1)).reason == "payment_header_too_large"


def test_a_header_at_the_size_limit_is_decoded() -> None:
    header = encode_payment_signature_header(V2).encode()
    assert decode_payment(header, max_bytes=len(header)) == V2
    assert refusal(header, max_bytes=len(header) - 1).reason == "payment_header_too_large"


@pytest.mark.parametrize("value", [b"not base64!", b"****", b"eyJ4NDAy=Vmvy", b"\xff\xfe"])
def test_a_header_that_is_not_base64_is_invalid_base64(value: bytes) -> None:
    assert refusal(value).reason == "invalid_base64"


def test_the_url_safe_alphabet_is_invalid_base64() -> None:
    raw = json.dumps(v2_dict(extensions={"k": "~~~???"})).encode()
    url_safe = base64.urlsafe_b64encode(raw)
    assert url_safe != base64.b64encode(raw)  # the payload does use - or _
    assert refusal(url_safe).reason == "invalid_base64"


def test_missing_padding_is_invalid_base64() -> None:
    header = encode_payment_signature_header(V2).encode()
    if not header.endswith(b"="):  # make the JSON one byte longer so that it needs padding
        header = b64(json.dumps(v2_dict()).encode() + b" ")
    assert header.endswith(b"=")
    assert refusal(header.rstrip(b"=")).reason == "invalid_base64"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"hello",
        b"{'x402Version': 2}",
        b'{"x402Version": 2',
        b"\x80\x81\x82",
        b'{"x402Version": 2, "k": "\xff"}',
        b"\xef\xbb\xbf" + json.dumps(v2_dict()).encode(),  # UTF-8 with a BOM
        json.dumps(v2_dict()).encode("utf-16"),
        json.dumps(v2_dict()).encode("utf-32"),
    ],
)
def test_a_header_that_is_not_utf8_json_is_invalid_json(raw: bytes) -> None:
    assert refusal(b64(raw)).reason == "invalid_json"


def test_deeply_nested_json_is_invalid_json() -> None:
    header = b64(b"[" * 5000)
    assert len(header) <= DEFAULT_MAX_HEADER_BYTES
    assert refusal(header).reason == "invalid_json"


def test_a_number_too_long_to_parse_is_invalid_json() -> None:
    assert refusal(b64(b'{"x402Version": ' + b"9" * 5000 + b"}")).reason == "invalid_json"


@pytest.mark.parametrize("value", [[], [v2_dict()], "payload", 2, 2.5, None, True])
def test_json_that_is_not_an_object_is_invalid_json(value: Any) -> None:
    assert refusal(b64_json(value)).reason == "invalid_json"


@pytest.mark.parametrize("version", [3, 0, -1, "2", "1", True, False, 2.0, None, [2], {"v": 2}])
def test_an_unknown_x402_version_is_unsupported(version: Any) -> None:
    error = refusal(b64_json(v2_dict(x402Version=version)))
    assert error.reason == "unsupported_x402_version"


def test_a_missing_x402_version_is_unsupported() -> None:
    data = v2_dict()
    del data["x402Version"]
    assert refusal(b64_json(data)).reason == "unsupported_x402_version"


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"x402Version": 2}, "payload"),
        ({"x402Version": 2, "payload": INNER}, "accepted"),
        ({"x402Version": 2, "accepted": REQUIREMENTS.model_dump(by_alias=True)}, "payload"),
        (v2_dict(payload=[1, 2]), "payload"),
        (v2_dict(accepted={"scheme": "upto"}), "accepted"),
        (v2_dict(accepted={**REQUIREMENTS.model_dump(by_alias=True), "amount": 5}), "amount"),
        ({"x402Version": 1, "network": "base", "payload": INNER}, "scheme"),
        ({"x402Version": 1, "scheme": "upto", "network": "base", "payload": "x"}, "payload"),
    ],
)
def test_a_payload_that_fails_the_schema_is_invalid_payload(
    data: dict[str, Any], where: str
) -> None:
    error = refusal(b64_json(data))
    assert error.reason == "invalid_payload"
    assert where in error.message


@settings(max_examples=500)
@given(value=st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_a_400_payment_error(value: bytes) -> None:
    result = decoded_or_error(value)
    if isinstance(result, PaymentError):
        assert result.status_code == 400


@settings(max_examples=300)
@given(value=JSON_VALUES)
def test_arbitrary_json_decodes_or_raises_a_400_payment_error(value: Any) -> None:
    result = decoded_or_error(b64_json(value))
    if isinstance(result, PaymentError):
        assert result.status_code == 400


@settings(max_examples=300)
@given(
    version=st.sampled_from([1, 2]),
    fields=st.dictionaries(
        st.sampled_from(["scheme", "network", "payload", "accepted", "resource", "extensions"]),
        JSON_VALUES,
    ),
)
def test_arbitrary_payload_objects_decode_or_raise_a_400_payment_error(
    version: int, fields: dict[str, Any]
) -> None:
    result = decoded_or_error(b64_json({"x402Version": version, **fields}))
    if isinstance(result, PaymentError):
        assert (result.reason, result.status_code) == ("invalid_payload", 400)
    else:
        assert result.x402_version == version
