"""Route table patterns: which method and path a ``routes=[...]`` entry meters."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x402_meter.errors import ConfigurationError
from x402_meter.pricing import TokenPrice
from x402_meter.routing import DEFAULT_SPEC, METERED_ATTRIBUTE, RouteSpec, RouteTable, metered

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
SEGMENTS = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=8)


def matches(pattern: str, method: str, path: str) -> bool:
    spec = RouteTable([pattern], app=None).table_spec(method, path)
    assert spec in (None, DEFAULT_SPEC)
    return spec is not None


def test_a_method_and_path_match_only_that_method_on_that_path() -> None:
    pattern = "POST /v1/chat/completions"
    assert matches(pattern, "POST", "/v1/chat/completions")
    assert not matches(pattern, "GET", "/v1/chat/completions")
    assert not matches(pattern, "POST", "/v1/chat/completions/x")
    assert not matches(pattern, "POST", "/v1/chat")
    assert not matches(pattern, "POST", "/prefix/v1/chat/completions")


@pytest.mark.parametrize("method", METHODS)
def test_a_path_without_methods_matches_every_method(method: str) -> None:
    assert matches("/v1/chat/completions", method, "/v1/chat/completions")


@pytest.mark.parametrize("path", ["/v1/answer/x", "/v1/answer/x/y", "/v1/answer/a/b/c/d.json"])
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_a_trailing_star_matches_any_depth_under_the_prefix(method: str, path: str) -> None:
    assert matches("/v1/answer/*", method, path)


@pytest.mark.parametrize("path", ["/v1/answers", "/v1/answers/x", "/v1/answe", "/v2/answer/x"])
def test_a_trailing_star_matches_nothing_outside_the_prefix(path: str) -> None:
    assert not matches("/v1/answer/*", "GET", path)


@settings(max_examples=200)
@given(segments=st.lists(SEGMENTS, min_size=1, max_size=5))
def test_a_trailing_star_matches_every_path_under_the_prefix(segments: list[str]) -> None:
    assert matches("/v1/answer/*", "POST", "/v1/answer/" + "/".join(segments))


def test_a_star_inside_the_path_matches_one_segment() -> None:
    assert matches("/v1/*/chat", "GET", "/v1/model-a/chat")
    assert not matches("/v1/*/chat", "GET", "/v1/a/b/chat")
    assert not matches("/v1/*/chat", "GET", "/v1//chat")


def test_a_star_followed_by_text_matches_within_one_segment() -> None:
    assert matches("/files/*.json", "GET", "/files/report.json")
    assert not matches("/files/*.json", "GET", "/files/2024/report.json")
    assert not matches("/files/*.json", "GET", "/files/report.txt")


def test_alternative_methods_match_a_single_segment_parameter() -> None:
    pattern = "GET|HEAD /items/{id}"
    assert matches(pattern, "GET", "/items/42")
    assert matches(pattern, "HEAD", "/items/abc-def")
    assert not matches(pattern, "POST", "/items/42")
    assert not matches(pattern, "GET", "/items/42/parts")
    assert not matches(pattern, "GET", "/items/")
    assert not matches(pattern, "GET", "/items")


@settings(max_examples=200)
@given(segment=SEGMENTS)
def test_a_parameter_matches_any_one_segment(segment: str) -> None:
    assert matches("GET /items/{id}/parts", "GET", f"/items/{segment}/parts")


def test_methods_are_case_insensitive_in_patterns() -> None:
    assert matches("post /x", "POST", "/x")


def test_regex_characters_in_a_path_are_literal() -> None:
    assert matches("/v1/a.b+(c)", "GET", "/v1/a.b+(c)")
    assert not matches("/v1/a.b+(c)", "GET", "/v1/aXbb(c)")


def test_the_first_matching_pattern_meters_the_request() -> None:
    table = RouteTable(["POST /a", "GET /b/*"], app=None)
    assert table.table_spec("POST", "/a") is DEFAULT_SPEC
    assert table.table_spec("GET", "/b/c") is DEFAULT_SPEC
    assert table.table_spec("GET", "/a") is None


def test_no_patterns_meter_nothing() -> None:
    assert RouteTable(None, app=None).table_spec("POST", "/v1/chat/completions") is None
    assert RouteTable([], app=None).table_spec("POST", "/v1/chat/completions") is None


@pytest.mark.parametrize(
    ("pattern", "complaint"),
    [
        ("FETCH /x", "unknown HTTP method"),
        ("POST|FETCH /x", "unknown HTTP method"),
        ("POST| /x", "unknown HTTP method"),
        ("POST v1/x", "must start with '/'"),
        ("v1/x", "must start with '/'"),
        ("POST", "must start with '/'"),
        ("", "must start with '/'"),
    ],
)
def test_a_bad_pattern_is_a_configuration_error(pattern: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        RouteTable([pattern], app=None)


def test_a_single_string_instead_of_a_list_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="list"):
        RouteTable("POST /v1/chat/completions", app=None)


@pytest.mark.parametrize("max_tokens", [0, -1, True])
def test_metered_without_a_positive_token_cap_is_a_configuration_error(max_tokens: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_tokens"):
        metered(max_tokens=max_tokens)


def test_metered_with_a_float_price_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="price_per_token"):
        metered(price_per_token=0.1)  # type: ignore[arg-type]


def test_metered_marks_the_endpoint_with_its_price_and_cap() -> None:
    def endpoint() -> None: ...

    assert metered(price_per_token="0.00001", max_tokens=512)(endpoint) is endpoint
    expected = RouteSpec(TokenPrice.flat("0.00001"), 512, None)
    assert getattr(endpoint, METERED_ATTRIBUTE) == expected


def test_a_trailing_star_matches_a_decoded_newline_in_the_path() -> None:
    # ASGI paths are percent-decoded: "/v1/answer/a%0Ab" must not escape the meter.
    assert matches("/v1/answer/*", "POST", "/v1/answer/a\nb")
    assert matches("/v1/answer/*", "POST", "/v1/answer/\n")


def test_extra_spaces_between_method_and_path_are_fine() -> None:
    table = RouteTable(["POST   /v1/chat/completions"], app=None)
    assert table.table_spec("POST", "/v1/chat/completions") is not None


def test_a_pattern_with_more_than_a_method_and_a_path_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        RouteTable(["POST /v1/chat extra"], app=None)


# -- the forms a router may route on (issue 13, finding 1) -----------------------------------

PATH_TEXT = st.text(st.sampled_from("/abcv1.%2F"), max_size=24)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions/",
        "//v1/chat/completions",
        "/v1//chat/completions",
        "/v1/chat/completions//",
        "/V1/Chat/Completions",
        "/v1/./chat/completions",
        "/v1/x/../chat/completions",
        "/v1/chat%2Fcompletions",
    ],
)
def test_a_pattern_matches_the_variants_a_router_or_proxy_may_normalise(path: str) -> None:
    assert matches("POST /v1/chat/completions", "POST", path)


def test_get_includes_head_which_starlette_answers_with_the_get_endpoint() -> None:
    assert matches("GET /v1/models", "HEAD", "/v1/models")
    assert not matches("GET /v1/models", "OPTIONS", "/v1/models")


def test_a_lower_case_method_is_matched_too() -> None:
    assert matches("POST /v1/chat/completions", "post", "/v1/chat/completions")


def test_a_trailing_star_takes_the_bare_prefix_once_collapsed() -> None:
    assert matches("/v1/answer/*", "GET", "/v1/answer/")
    assert matches("/v1/answer/*", "GET", "/v1/answer")
    assert matches("/*", "GET", "/")


@pytest.mark.parametrize("root_path", ["/api", "/llm", "/a/b"])
def test_a_pattern_matches_the_path_below_root_path(root_path: str) -> None:
    table = RouteTable(["POST /v1/chat/completions"], app=None)
    assert table.table_spec("POST", f"{root_path}/v1/chat/completions", root_path) is not None
    assert table.table_spec("POST", f"{root_path}/v1/chat/other", root_path) is None


@settings(max_examples=300)
@given(path=PATH_TEXT, root_path=st.sampled_from(["", "/api", "/v1"]))
def test_whatever_litestar_routes_on_the_table_matches_too(path: str, root_path: str) -> None:
    from litestar.utils import normalize_path

    routed = normalize_path(path.split(root_path, maxsplit=1)[-1] if root_path else path)
    table = RouteTable(["POST /v1/chat/completions", "/v1/answer/*"], app=None)
    if table.table_spec("POST", routed) is not None:
        assert table.table_spec("POST", root_path + path, root_path) is not None


@settings(max_examples=300)
@given(path=PATH_TEXT, root_path=st.sampled_from(["", "/api", "/a/b"]))
def test_whatever_starlette_routes_on_the_table_matches_too(path: str, root_path: str) -> None:
    from starlette._utils import get_route_path

    full = root_path + path
    routed = get_route_path({"path": full, "root_path": root_path})
    table = RouteTable(["POST /v1/chat/completions", "/v1/answer/*"], app=None)
    if table.table_spec("POST", routed) is not None:
        assert table.table_spec("POST", full, root_path) is not None
