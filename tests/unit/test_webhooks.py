"""Webhook signing, the secret file, the retry policy and the SSRF guard: the pure parts."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import stat
import time
from collections.abc import Sequence
from email.utils import formatdate
from pathlib import Path

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

import cortex
from cortex.errors import ConfigError, WebhookRefusedError
from cortex.jobs.models import Delivery
from cortex.jobs.ssrf import (
    check_webhook_url,
    check_webhook_url_async,
    parse_allow_cidrs,
    resolve_host,
)
from cortex.jobs.webhooks import (
    DEFAULT_RETRY_SCHEDULE,
    SECRET_FILE,
    load_or_create_secret,
    next_attempt,
    parse_retry_schedule,
    retry_after_seconds,
    secret_key,
    sign_headers,
)

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
PAYLOAD = b'{"run_id":"run-1","status":"completed","run_time_ms":1.5,"result":{"text":"hi \xc3\xa9"}}'


def delivery(cerebrium_secret: str | None = None) -> Delivery:
    return Delivery("msg_1", "run-1", "https://example.com/hook", PAYLOAD, cerebrium_secret=cerebrium_secret)


# -- Signing ----------------------------------------------------------------------------------


def test_standard_webhooks_signature_verifies():
    headers = sign_headers(delivery(), SECRET, int(time.time()))
    assert Webhook(SECRET).verify(PAYLOAD, headers) == json.loads(PAYLOAD)
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-signature"].startswith("v1,")


def test_signature_does_not_verify_with_another_secret_or_body():
    headers = sign_headers(delivery(), SECRET, int(time.time()))
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(PAYLOAD, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(PAYLOAD.replace(b"hi", b"ho"), headers)


def test_signature_covers_the_timestamp():
    now = int(time.time())
    first, second = sign_headers(delivery(), SECRET, now), sign_headers(delivery(), SECRET, now + 1)
    assert first["webhook-id"] == second["webhook-id"]
    assert (first["webhook-timestamp"], second["webhook-timestamp"]) == (str(now), str(now + 1))
    assert first["webhook-signature"] != second["webhook-signature"]
    forged = {**second, "webhook-signature": first["webhook-signature"]}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(PAYLOAD, forged)


def test_content_type_and_user_agent():
    headers = sign_headers(delivery(), SECRET, 1_700_000_000)
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"cortex-webhooks/{cortex.__version__}"


def test_no_cerebrium_headers_without_x_webhook_secret():
    headers = sign_headers(delivery(), SECRET, 1_700_000_000)
    assert not any(name.lower().startswith(("x-cerebrium", "x-request-id")) for name in headers)


def test_cerebrium_signature_when_run_carried_x_webhook_secret():
    now = int(time.time())
    headers = sign_headers(delivery(cerebrium_secret="s3cret"), SECRET, now)
    expected = hmac.new(b"s3cret", f"run-1.{now}.".encode() + PAYLOAD, hashlib.sha256).hexdigest()
    assert headers["X-Request-Id"] == "run-1"
    assert headers["X-Cerebrium-Webhook-Timestamp"] == str(now)
    assert headers["X-Cerebrium-Webhook-Signature"] == f"v1,{expected}"
    assert Webhook(SECRET).verify(PAYLOAD, headers) is not None  # the standard one is still there


def test_secret_key_accepts_unpadded_base64_like_standardwebhooks():
    assert secret_key("whsec_YWJj") == b"abc"
    assert secret_key("whsec_YWI") == secret_key("whsec_YWI=") == b"ab"


# -- The secret -------------------------------------------------------------------------------


def test_secret_file_is_created_private_and_reused(tmp_path: Path):
    state_dir = tmp_path / "state" / "nested"
    secret, path = load_or_create_secret(None, state_dir)
    assert path == state_dir / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == secret + "\n"
    assert secret.startswith("whsec_") and len(secret_key(secret)) == 32
    assert load_or_create_secret(None, state_dir) == (secret, path)
    assert os.listdir(state_dir) == [SECRET_FILE]  # no scratch file left behind
    Webhook(secret)  # the standardwebhooks library accepts it


def test_each_state_dir_gets_its_own_secret(tmp_path: Path):
    first, _ = load_or_create_secret(None, tmp_path / "a")
    second, _ = load_or_create_secret(None, tmp_path / "b")
    assert first != second


def test_configured_secret_wins_and_no_file_is_written(tmp_path: Path):
    assert load_or_create_secret(SECRET, tmp_path) == (SECRET, None)
    assert not (tmp_path / SECRET_FILE).exists()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("abc", "got a value without the whsec_ prefix"),
        (base64.b64encode(b"k" * 32).decode(), "got a value without the whsec_ prefix"),
        ("whsec_not base64!", "got a key that is not valid base64"),
        ("whsec_", "got an empty key"),
    ],
)
def test_bad_configured_secret_is_refused(tmp_path: Path, value: str, problem: str):
    with pytest.raises(ConfigError) as info:
        load_or_create_secret(value, tmp_path)
    assert str(info.value) == (
        f"CORTEX_WEBHOOK_SECRET: expected whsec_ followed by a base64-encoded key, {problem}."
    )


def test_corrupt_secret_file_names_the_file(tmp_path: Path):
    (tmp_path / SECRET_FILE).write_text("hunter2\n")
    with pytest.raises(ConfigError) as info:
        load_or_create_secret(None, tmp_path)
    assert str(info.value) == (
        f"{tmp_path / SECRET_FILE}: expected whsec_ followed by a base64-encoded key, got a value "
        "without the whsec_ prefix. Delete the file to have a new secret created."
    )


def test_unusable_state_dir_is_a_config_error(tmp_path: Path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(ConfigError) as info:
        load_or_create_secret(None, not_a_dir)
    assert str(info.value) == (
        f"{not_a_dir / SECRET_FILE}: cannot read or create the webhook secret (Not a directory). "
        "Make the directory writable or set CORTEX_WEBHOOK_SECRET."
    )


# -- Retry policy -----------------------------------------------------------------------------


def test_default_schedule():
    assert DEFAULT_RETRY_SCHEDULE == (1, 5, 30, 120, 600, 1800, 3600, 10800)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1,5,30", (1.0, 5.0, 30.0)), (" 0.5 , 2 ", (0.5, 2.0)), ("3600", (3600.0,))],
)
def test_retry_schedule_parses(text: str, expected: tuple[float, ...]):
    assert parse_retry_schedule(text) == expected


@pytest.mark.parametrize("text", ["", " ", "1,,5", "1,5,", "0", "1,-5", "soon", "nan", "inf", "1;5"])
def test_bad_retry_schedule_is_refused(text: str):
    with pytest.raises(ConfigError) as info:
        parse_retry_schedule(text)
    assert str(info.value) == (
        "CORTEX_WEBHOOK_RETRY_SCHEDULE: expected comma-separated positive numbers of seconds "
        f"such as 1,5,30, got {text!r}"
    )


NOW = 1_700_000_000.0
SCHEDULE = (1.0, 5.0, 30.0)


@pytest.mark.parametrize(
    ("attempts", "status", "retry_after", "expected"),
    [
        (1, 500, None, NOW + 1),  # first failure: the first delay
        (2, 500, None, NOW + 5),
        (3, None, None, NOW + 30),  # connection error or timeout: retried too
        (4, 500, None, None),  # schedule used up: 4 attempts for 3 delays
        (1, 302, None, NOW + 1),  # a redirect is a failure
        (1, 400, None, NOW + 1),
        (1, 410, None, None),  # Gone: stop at once
        (2, 410, None, None),
        (1, 200, None, None),  # delivered
        (1, 204, None, None),
        (1, 429, "20", NOW + 20),  # Retry-After asks for longer than the schedule
        (1, 503, "20", NOW + 20),
        (2, 429, "2", NOW + 5),  # ... or for less: the schedule wins
        (1, 429, "99999", NOW + 30),  # capped at the schedule's longest delay
        (1, 503, formatdate(NOW + 12, usegmt=True), NOW + 12),  # an HTTP-date
        (1, 503, formatdate(NOW - 60, usegmt=True), NOW + 1),  # a date in the past
        (1, 429, "soon", NOW + 1),  # unreadable: ignored
        (1, 500, "20", NOW + 1),  # only 429 and 503 are asked to be patient
        (4, 429, "20", None),  # Retry-After does not extend the schedule
    ],
)
def test_next_attempt(attempts: int, status: int | None, retry_after: str | None, expected: float | None):
    assert next_attempt(attempts, SCHEDULE, NOW, status, retry_after) == expected


def test_default_schedule_allows_nine_attempts():
    assert next_attempt(8, DEFAULT_RETRY_SCHEDULE, NOW, 500, None) == NOW + 10800
    assert next_attempt(9, DEFAULT_RETRY_SCHEDULE, NOW, 500, None) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        (formatdate(NOW + 90, usegmt=True), 90.0),
        ("Tue, 14 Nov 2023 22:13:20 GMT", 0.0),  # = NOW, as a date
        ("-5", None),
        ("1.5", None),
        ("", None),
    ],
)
def test_retry_after_seconds(header: str, expected: float | None):
    assert retry_after_seconds(header, NOW) == expected


# -- Allowed networks -------------------------------------------------------------------------


def test_allow_cidrs_parse():
    assert parse_allow_cidrs("127.0.0.0/8, ::1/128") == [
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    ]
    assert parse_allow_cidrs("") == []
    assert parse_allow_cidrs("10.1.2.3") == [ipaddress.ip_network("10.1.2.3/32")]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("127.0.0.1/8", "127.0.0.1/8 has host bits set"),
        ("localhost", "'localhost' does not appear to be an IPv4 or IPv6 network"),
        ("10.0.0.0/33", "'10.0.0.0/33' does not appear to be an IPv4 or IPv6 network"),
    ],
)
def test_bad_allow_cidrs_are_refused(text: str, why: str):
    with pytest.raises(ConfigError) as info:
        parse_allow_cidrs(text)
    assert str(info.value) == (
        "CORTEX_WEBHOOK_ALLOW_CIDRS: expected comma-separated networks such as "
        f"127.0.0.0/8,::1/128, got {text!r} ({why})"
    )


# -- The SSRF guard ---------------------------------------------------------------------------

# Host names answer from this table, so these tests never touch DNS.
HOSTS = {
    "localhost": ["127.0.0.1", "::1"],
    "example.com": ["93.184.216.34"],
    "v6.example.com": ["2606:2800:220:1:248:1893:25c8:1946"],
    "rebind.example.com": ["93.184.216.34", "10.0.0.1"],
    "metadata.example.com": ["169.254.169.254"],
    "empty.example.com": [],
}


def fake_resolve(host: str, port: int) -> Sequence[str]:
    if host not in HOSTS:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return HOSTS[host]


def refusal(url: str, allow: str = "") -> str:
    with pytest.raises(WebhookRefusedError) as info:
        check_webhook_url(url, parse_allow_cidrs(allow), fake_resolve)
    return str(info.value)


@pytest.mark.parametrize(
    ("url", "address", "reason"),
    [
        ("http://127.0.0.1/", "127.0.0.1", "a loopback address"),
        ("http://127.0.0.1./", "127.0.0.1", "a loopback address"),
        ("http://localhost/", "127.0.0.1", "a loopback address"),
        ("https://LOCALHOST:8443/", "127.0.0.1", "a loopback address"),
        ("http://2130706433/", "127.0.0.1", "a loopback address"),  # decimal
        ("http://0x7f.1/", "127.0.0.1", "a loopback address"),  # hex, two parts
        ("http://0x7f000001/", "127.0.0.1", "a loopback address"),
        ("http://017700000001/", "127.0.0.1", "a loopback address"),  # octal
        ("http://0177.0.0.01/", "127.0.0.1", "a loopback address"),
        ("http://127.1/", "127.0.0.1", "a loopback address"),
        ("http://[::1]/", "::1", "a loopback address"),
        ("http://0.0.0.0/", "0.0.0.0", "the unspecified address"),
        ("http://0/", "0.0.0.0", "the unspecified address"),
        ("http://[::]/", "::", "the unspecified address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "the cloud metadata address"),
        ("http://metadata.example.com/", "169.254.169.254", "the cloud metadata address"),
        ("http://[fd00:ec2::254]/", "fd00:ec2::254", "the cloud metadata address"),
        ("http://169.254.1.1/", "169.254.1.1", "a link-local address"),
        ("http://10.0.0.1/", "10.0.0.1", "a private address"),
        ("http://172.16.5.4/", "172.16.5.4", "a private address"),
        ("http://192.168.1.1:8080/", "192.168.1.1", "a private address"),
        ("http://100.64.0.1/", "100.64.0.1", "not a globally routable address"),  # carrier-grade NAT
        ("http://224.0.0.1/", "224.0.0.1", "a multicast address"),
        ("http://240.0.0.1/", "240.0.0.1", "a reserved address"),
        ("http://[fd00::1]/", "fd00::1", "a private address"),
        ("http://[fdff:ffff::1]/", "fdff:ffff::1", "a private address"),
        ("http://[fe80::1]/", "fe80::1", "a link-local address"),
        ("http://[febf::1]/", "febf::1", "a link-local address"),
        ("http://[fec0::1]/", "fec0::1", "a site-local address"),
        ("http://[ff02::1]/", "ff02::1", "a multicast address"),
        ("http://[2001:db8::1]/", "2001:db8::1", "a private address"),  # documentation range
        ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1", "which embeds 127.0.0.1, a loopback address"),
        ("http://[::ffff:10.0.0.1]/", "::ffff:a00:1", "which embeds 10.0.0.1, a private address"),
        (
            "http://[::ffff:169.254.169.254]/",
            "::ffff:a9fe:a9fe",
            "which embeds 169.254.169.254, the cloud metadata address",
        ),
        ("http://[::127.0.0.1]/", "::7f00:1", "which embeds 127.0.0.1, a loopback address"),  # compatible
        ("http://[2002:a00:1::1]/", "2002:a00:1::1", "which embeds 10.0.0.1, a private address"),  # 6to4
        ("http://[64:ff9b::7f00:1]/", "64:ff9b::7f00:1", "which embeds 127.0.0.1, a loopback address"),
        ("http://rebind.example.com/", "10.0.0.1", "a private address"),  # any address counts
    ],
)
def test_non_public_address_is_refused(url: str, address: str, reason: str):
    network = ipaddress.ip_network(address).compressed
    assert refusal(url) == (
        f"webhook URL {url!r} points at {address}, {reason}; webhooks may only target public addresses. "
        f"To allow it, add its network to CORTEX_WEBHOOK_ALLOW_CIDRS (e.g. {network})."
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/", "webhook URL 'ftp://example.com/': scheme must be http or https, got 'ftp'"),
        ("file:///etc/passwd", "webhook URL 'file:///etc/passwd': scheme must be http or https, got 'file'"),
        (
            "gopher://127.0.0.1:6379/",
            "webhook URL 'gopher://127.0.0.1:6379/': scheme must be http or https, got 'gopher'",
        ),
        ("example.com/hook", "webhook URL 'example.com/hook': scheme must be http or https, got ''"),
        (
            "http://user:pass@example.com/",
            "webhook URL 'http://***@example.com/' must not contain a user name or password",
        ),
        (
            "http://attacker@127.0.0.1/",
            "webhook URL 'http://***@127.0.0.1/' must not contain a user name or password",
        ),
        ("http:///hook", "webhook URL 'http:///hook' has no host"),
        ("https://", "webhook URL 'https://' has no host"),
        ("http://[::1/", "webhook URL 'http://[::1/' is not a valid URL: Invalid IPv6 URL"),
        (
            "http://example.com:99999/",
            "webhook URL 'http://example.com:99999/' is not a valid URL: Port out of range 0-65535",
        ),
        ("http://a..b/", "webhook URL 'http://a..b/': 'a..b' is not a valid host name"),
        (
            "http://nowhere.invalid/",
            "webhook URL 'http://nowhere.invalid/': cannot resolve host 'nowhere.invalid' "
            "([Errno -2] Name or service not known)",
        ),
        (
            "http://empty.example.com/",
            "webhook URL 'http://empty.example.com/': cannot resolve host 'empty.example.com' (no addresses)",
        ),
    ],
)
def test_malformed_url_is_refused(url: str, message: str):
    assert refusal(url) == message


def test_any_non_public_address_refuses_even_when_one_network_is_allowed():
    # localhost is 127.0.0.1 and ::1; allowing only the IPv4 loopback still refuses ::1.
    assert "points at ::1, a loopback address" in refusal("http://localhost/", "127.0.0.0/8")


@pytest.mark.parametrize(
    ("url", "allow", "connect_url", "host_header"),
    [
        ("http://93.184.216.34/hook?x=1", "", "http://93.184.216.34:80/hook?x=1", "93.184.216.34"),
        ("https://example.com/hook", "", "https://93.184.216.34:443/hook", "example.com"),
        ("https://Example.COM.:8443", "", "https://93.184.216.34:8443/", "example.com:8443"),
        (
            "http://v6.example.com/",
            "",
            "http://[2606:2800:220:1:248:1893:25c8:1946]:80/",
            "v6.example.com",
        ),
        (
            "http://[2606:4700:4700::1111]:8080/x",
            "",
            "http://[2606:4700:4700::1111]:8080/x",
            "[2606:4700:4700::1111]:8080",
        ),
        ("http://[::ffff:93.184.216.34]/", "", "http://93.184.216.34:80/", "[::ffff:93.184.216.34]"),
        ("http://127.0.0.1:9000/hook", "127.0.0.0/8", "http://127.0.0.1:9000/hook", "127.0.0.1:9000"),
        ("http://localhost:9000/", "127.0.0.0/8,::1/128", "http://127.0.0.1:9000/", "localhost:9000"),
        ("http://0x7f.1/", "127.0.0.0/8", "http://127.0.0.1:80/", "0x7f.1"),
        ("http://[::ffff:127.0.0.1]/", "127.0.0.0/8", "http://127.0.0.1:80/", "[::ffff:127.0.0.1]"),
        ("http://10.1.2.3/", "10.0.0.0/8", "http://10.1.2.3:80/", "10.1.2.3"),
    ],
)
def test_allowed_url_connects_to_the_checked_address(
    url: str, allow: str, connect_url: str, host_header: str
):
    checked = check_webhook_url(url, parse_allow_cidrs(allow), fake_resolve)
    assert checked.url == url
    assert checked.connect_url == connect_url
    assert checked.host_header == host_header


def test_https_sends_the_host_name_as_sni():
    assert check_webhook_url("https://example.com/", (), fake_resolve).extensions == {
        "sni_hostname": "example.com"
    }
    assert check_webhook_url("http://example.com/", (), fake_resolve).extensions == {}
    assert check_webhook_url("https://93.184.216.34/", (), fake_resolve).extensions == {}


def test_legacy_ipv4_spellings_resolve_to_loopback_with_the_system_resolver_too():
    # Our own reading of these must agree with getaddrinfo's (inet_aton), which is what a
    # connection to the host name would use.
    for host in ("2130706433", "0x7f.1", "017700000001", "127.1"):
        assert resolve_host(host, 80) == ["127.0.0.1"]
        assert "points at 127.0.0.1, a loopback address" in refusal(f"http://{host}/")


def test_localhost_is_refused_with_the_system_resolver():
    with pytest.raises(WebhookRefusedError, match=r"points at (127\.0\.0\.1|::1), a loopback address"):
        check_webhook_url("http://localhost:8000/hook")


def test_async_check_uses_the_event_loop_resolver():
    async def answer(host: str, port: int) -> Sequence[str]:
        return fake_resolve(host, port)

    async def main() -> None:
        checked = await check_webhook_url_async("https://example.com/x", (), answer)
        assert checked.connect_url == "https://93.184.216.34:443/x"
        with pytest.raises(WebhookRefusedError, match=r"points at 10\.0\.0\.1, a private address"):
            await check_webhook_url_async("http://rebind.example.com/", (), answer)
        with pytest.raises(WebhookRefusedError, match="a loopback address"):
            await check_webhook_url_async("http://localhost/")  # loop.getaddrinfo
        with pytest.raises(WebhookRefusedError, match="has no host"):
            await check_webhook_url_async("http:///x")

    asyncio.run(main())
