"""Signatures and bearer tokens: what passes, what fails, and that failures say why
without ever giving away the expected value."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from runner.errors import TreadleError
from runner.triggers.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    check_bearer,
    sign,
    signed_headers,
    verify,
)

KEY = "whsec-test-key"
BODY = b'{"event_type":"run.succeeded","run_id":"abc"}'
NOW = 1_700_000_000.25


def _check(body: bytes = BODY, key: str = KEY, *, now: float = NOW, **headers: str | None) -> None:
    sent = signed_headers(KEY, BODY, NOW)
    timestamp = headers.get("timestamp", sent[TIMESTAMP_HEADER])
    signature = headers.get("signature", sent[SIGNATURE_HEADER])
    verify(key, body, timestamp, signature, now=now)


def test_sign_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(KEY.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(KEY, BODY, 1_700_000_000) == f"sha256={expected}"
    assert signed_headers(KEY, BODY, NOW) == {
        "X-Treadle-Timestamp": "1700000000", "X-Treadle-Signature": f"sha256={expected}",
    }


def test_round_trip_passes_and_uppercase_hex_is_accepted() -> None:
    _check()
    sent = signed_headers(KEY, BODY, NOW)
    _check(signature="sha256=" + sent[SIGNATURE_HEADER].removeprefix("sha256=").upper())
    _check(timestamp=f" {sent[TIMESTAMP_HEADER]} ")  # servers may keep surrounding spaces


def test_signature_error_is_a_treadle_error_with_its_own_code() -> None:
    assert issubclass(SignatureError, TreadleError)
    assert SignatureError.error_code == "SIGNATURE_INVALID"


def test_tampered_body_fails_without_revealing_the_expected_value() -> None:
    with pytest.raises(SignatureError, match="does not match") as caught:
        _check(body=BODY + b" ")
    real = sign(KEY, BODY + b" ", int(NOW)).removeprefix("sha256=")
    assert real not in str(caught.value)
    assert sign(KEY, BODY, int(NOW)).removeprefix("sha256=") not in str(caught.value)


def test_wrong_key_fails() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        _check(key="another-key")


def test_timestamp_is_part_of_what_is_signed() -> None:
    # the same signature under a newer (still fresh) timestamp: a replay with a new date
    with pytest.raises(SignatureError, match="does not match"):
        _check(timestamp=str(int(NOW) + 10))


@pytest.mark.parametrize(("offset", "word"), [(301, "past"), (-400, "future")])
def test_timestamps_outside_five_minutes_fail_and_say_how_far_off(offset: int, word: str) -> None:
    with pytest.raises(SignatureError, match=f"{abs(offset)} s in the {word}"):
        _check(now=NOW + offset)


def test_timestamps_just_inside_the_window_pass() -> None:
    _check(now=NOW + 299)
    _check(now=NOW - 299)
    with pytest.raises(SignatureError, match="in the past"):  # a tighter window is honoured
        verify(KEY, BODY, str(int(NOW)), sign(KEY, BODY, int(NOW)), now=NOW + 61, tolerance=60)


def test_the_five_minute_window_is_inclusive_to_the_second() -> None:
    sent = int(NOW)  # the timestamp is whole seconds; `now` need not be
    _check(now=sent + 300)  # exactly 300 s either way still passes
    _check(now=sent - 300)
    for now, word in ((sent + 300.25, "past"), (sent - 300.5, "future")):
        with pytest.raises(SignatureError) as caught:
            _check(now=now)
        assert str(caught.value) == (
            f"X-Treadle-Timestamp is {abs(now - sent):.0f} s in the {word}, more than the 300 s allowed; "
            "check the sender's clock (or this is a replay)")
    verify(KEY, BODY, str(sent), sign(KEY, BODY, sent), now=sent + 60, tolerance=60)
    # under a second off with no tolerance at all: the direction is still right
    for now, word in ((sent + 0.5, "past"), (sent - 0.5, "future")):
        with pytest.raises(SignatureError, match=f"is 0 s in the {word}, more than the 0 s allowed"):
            verify(KEY, BODY, str(sent), sign(KEY, BODY, sent), now=now, tolerance=0)
    with pytest.raises(SignatureError, match="more than the 60 s allowed"):
        verify(KEY, BODY, str(sent), sign(KEY, BODY, sent), now=sent + 60.5, tolerance=60)


@pytest.mark.parametrize(("field", "named"), [
    ("timestamp", "missing X-Treadle-Timestamp header"),
    ("signature", "missing X-Treadle-Signature header"),
])
def test_a_missing_header_is_named(field: str, named: str) -> None:
    for absent in (None, "", "  "):
        with pytest.raises(SignatureError) as caught:
            _check(**{field: absent})
        assert str(caught.value) == f"{named}; sign the call as described for Treadle webhooks"


def test_both_headers_missing_names_both() -> None:
    with pytest.raises(SignatureError, match="X-Treadle-Timestamp and X-Treadle-Signature headers"):
        verify(KEY, BODY, None, None, now=NOW)


@pytest.mark.parametrize("timestamp", ["soon", "1700000000.5", "-1700000000", "1e9", "9" * 40])
def test_a_timestamp_that_is_not_whole_seconds_fails(timestamp: str) -> None:
    with pytest.raises(SignatureError, match="is not a number") as caught:
        _check(timestamp=timestamp)
    assert len(str(caught.value)) < 200  # whatever was sent is not echoed at length


@pytest.mark.parametrize(("timestamp", "shown"), [
    ("x" * 40, repr("x" * 40)),  # up to 40 characters: quoted whole
    ("x" * 41, repr("x" * 40 + "...")),  # longer: cut, so a sender cannot fill the logs
    ("1" * 16, repr("1" * 16)),  # digits, but more than 15 of them: no timestamp either
    ("9" * 5000, repr("9" * 40 + "...")),
])
def test_a_long_timestamp_is_cut_in_the_message(timestamp: str, shown: str) -> None:
    with pytest.raises(SignatureError) as caught:
        _check(timestamp=timestamp)
    assert str(caught.value) == (f"X-Treadle-Timestamp {shown} is not a number; "
                                 "send whole unix seconds, e.g. 1700000000")


@pytest.mark.parametrize("signature", [
    "abc", "sha256=", "sha256=xyz", "sha1=" + "0" * 40, "sha256=" + "0" * 63, "sha256=" + "g" * 64,
    "sha256:" + "0" * 64,
])
def test_a_malformed_signature_fails_on_its_form(signature: str) -> None:
    with pytest.raises(SignatureError, match=r"not in the form sha256=<64 hex digits>"):
        _check(signature=signature)


def test_an_empty_secret_never_verifies() -> None:
    headers = signed_headers("", BODY, NOW)
    with pytest.raises(SignatureError, match="no signing secret"):
        verify("", BODY, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], now=NOW)


# -- bearer tokens -----------------------------------------------------------------------

TOKEN = "tok-3f9a-Zz"


def test_the_right_bearer_token_passes_whatever_the_scheme_case() -> None:
    check_bearer(TOKEN, f"Bearer {TOKEN}")
    check_bearer(TOKEN, f"bearer   {TOKEN} ")


@pytest.mark.parametrize("header", [None, "", "   "])
def test_a_missing_authorization_header_is_named(header: str | None) -> None:
    with pytest.raises(SignatureError, match="missing Authorization header"):
        check_bearer(TOKEN, header)


@pytest.mark.parametrize("header", [TOKEN, f"Basic {TOKEN}", "Bearer", "Bearer  ", f"Bearer {TOKEN} x"])
def test_an_ill_formed_authorization_header_fails(header: str) -> None:
    with pytest.raises(SignatureError, match="not of the form 'Bearer <token>'"):
        check_bearer(TOKEN, header)


@pytest.mark.parametrize("token", [TOKEN + "x", TOKEN[:-1], TOKEN.upper(), "tök-ünïcode"])
def test_a_wrong_bearer_token_fails_without_revealing_the_right_one(token: str) -> None:
    with pytest.raises(SignatureError, match="wrong bearer token") as caught:
        check_bearer(TOKEN, f"Bearer {token}")
    assert TOKEN not in str(caught.value)


def test_an_empty_expected_token_never_matches() -> None:
    with pytest.raises(SignatureError, match="no bearer token is configured"):
        check_bearer("", "Bearer x")
