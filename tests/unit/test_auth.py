"""The auth decision table (pure: the clock is a parameter), key loading and token minting."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from cortex.auth import (
    LEEWAY_SECONDS,
    MAX_TOKEN_BYTES,
    Authenticator,
    Denial,
    Principal,
    Verifier,
    auth_enabled,
    authorize,
    exposure_warning,
    mint_token,
    verifier_from_settings,
)
from cortex.config import load_settings, parse_config
from cortex.errors import ConfigError
from tests.auth_tokens import (
    AUDIENCE,
    ISSUER,
    PROJECT,
    SECRET,
    bad_tokens,
    claims,
    es256,
    hs256,
    keys,
    rs256,
)

NOW = 1_800_000_000.0


def verifier(**settings: object) -> Verifier:
    base: dict[str, object] = {
        "project_id": PROJECT,
        "jwt_secret": SECRET,
        "jwt_public_key": keys().rsa_public_pem,
        "jwt_audience": AUDIENCE,
        "jwt_issuer": ISSUER,
    }
    base.update(settings)
    return verifier_from_settings(load_settings(environ={}, **base))


def header(token: str) -> bytes:
    return f"Bearer {token}".encode()


@pytest.mark.parametrize("sign", [hs256, rs256], ids=["HS256", "RS256"])
def test_a_valid_token_names_its_project_and_subject(sign: object) -> None:
    token = sign(claims(NOW))  # type: ignore[operator]
    decision = authorize(header(token), verifier(), NOW)
    assert decision == Principal(PROJECT, "tester", NOW + 600 - (NOW % 1))


def test_es256_with_an_ec_public_key() -> None:
    check = verifier(jwt_secret=None, jwt_public_key=keys().ec_public_pem)
    assert isinstance(authorize(header(es256(claims(NOW))), check, NOW), Principal)


def test_the_scheme_is_case_insensitive() -> None:
    assert isinstance(authorize(b"bearer " + hs256(claims(NOW)).encode(), verifier(), NOW), Principal)


@pytest.mark.parametrize("case", list(bad_tokens(NOW)))
def test_every_bad_token_is_refused_with_401(case: str) -> None:
    value = bad_tokens(NOW)[case]
    decision = authorize(None if value is None else value.encode(), verifier(), NOW)
    assert isinstance(decision, Denial), case
    assert decision.status == 401
    assert decision.www_authenticate.startswith('Bearer realm="cortex"')
    token_sent = value is not None and value.startswith("Bearer ") and value.strip() != "Bearer"
    assert ('error="invalid_token"' in decision.www_authenticate) == token_sent
    assert decision.code == ("invalid_token" if token_sent else "unauthorized")


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing", "requires authentication"),
        ("basic scheme", "Unsupported authorization scheme 'Basic'"),
        ("alg none", "signed with 'none'; this server accepts HS256, RS256"),
        ("rs->hs confusion", "signature does not match"),
        ("tampered rs256", "signature does not match"),
        ("expired", "expired 3600 s ago"),
        ("nbf in the future", "not valid yet"),
        ("missing exp", "no expiry"),
        ("exp not a number", "exp claim must be a number"),
        ("wrong audience", "audience (aud) is not 'cortex-tests'"),
        ("missing audience", "no 'aud' claim"),
        ("wrong issuer", "issuer (iss) is not 'https://issuer.test'"),
        ("missing projectId", "no projectId claim"),
        ("10 kB token", f"longer than {MAX_TOKEN_BYTES} bytes"),
    ],
)
def test_the_refusal_names_the_reason(case: str, reason: str) -> None:
    value = bad_tokens(NOW)[case]
    decision = authorize(None if value is None else value.encode(), verifier(), NOW)
    assert isinstance(decision, Denial)
    assert reason in decision.message


def test_a_token_of_another_project_is_403() -> None:
    decision = authorize(header(hs256(claims(NOW, projectId="p-other"))), verifier(), NOW)
    assert isinstance(decision, Denial)
    assert (decision.status, decision.code) == (403, "forbidden")
    assert "'p-other'" in decision.message and f"'{PROJECT}'" in decision.message
    assert 'error="insufficient_scope"' in decision.www_authenticate


def test_leeway_is_30_seconds_on_exp_and_nbf() -> None:
    just_expired = header(hs256(claims(NOW, exp=int(NOW) - LEEWAY_SECONDS + 1)))
    long_expired = header(hs256(claims(NOW, exp=int(NOW) - LEEWAY_SECONDS - 1)))
    almost_valid = header(hs256(claims(NOW, nbf=int(NOW) + LEEWAY_SECONDS - 1)))
    assert isinstance(authorize(just_expired, verifier(), NOW), Principal)
    assert isinstance(authorize(long_expired, verifier(), NOW), Denial)
    assert isinstance(authorize(almost_valid, verifier(), NOW), Principal)


def test_an_hs256_only_server_refuses_rs256_and_vice_versa() -> None:
    hs_only = verifier(jwt_public_key=None)
    rs_only = verifier(jwt_secret=None)
    refused_rs = authorize(header(rs256(claims(NOW))), hs_only, NOW)
    refused_hs = authorize(header(hs256(claims(NOW))), rs_only, NOW)
    assert isinstance(refused_rs, Denial) and "accepts HS256" in refused_rs.message
    assert isinstance(refused_hs, Denial) and "accepts RS256" in refused_hs.message


def test_without_audience_setting_a_token_naming_one_is_refused() -> None:
    decision = authorize(header(hs256(claims(NOW))), verifier(jwt_audience=None), NOW)
    assert isinstance(decision, Denial) and "expects none" in decision.message
    plain = header(hs256(claims(NOW, aud=None, iss=None)))
    assert isinstance(authorize(plain, verifier(jwt_audience=None, jwt_issuer=None), NOW), Principal)


def test_text_from_the_token_never_breaks_the_header() -> None:
    good = hs256(claims(NOW))
    forged_header = base64.urlsafe_b64encode(json.dumps({"alg": "x\r\nSet-Cookie: a=\u00e9"}).encode())
    forged = forged_header.rstrip(b"=").decode() + good[good.index(".") :]
    decision = authorize(header(forged), verifier(), NOW)
    assert isinstance(decision, Denial)
    decision.www_authenticate.encode("ascii")
    assert "\r" not in decision.www_authenticate and "\n" not in decision.www_authenticate


def test_no_key_refuses_to_start_naming_the_variables() -> None:
    with pytest.raises(ConfigError) as caught:
        verifier_from_settings(load_settings(environ={}))
    assert "CORTEX_JWT_SECRET" in caught.value.message
    assert "CORTEX_JWT_PUBLIC_KEY" in caught.value.message


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="expected at least 32 bytes, got 5"):
        verifier_from_settings(load_settings(environ={"CORTEX_JWT_SECRET": "short"}))


def test_the_public_key_may_be_a_path(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text(keys().rsa_public_pem)
    check = verifier_from_settings(load_settings(environ={"CORTEX_JWT_PUBLIC_KEY": str(path)}))
    assert list(check.keys) == ["RS256"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/no/such/key.pem", "expected PEM text or a readable file, got '/no/such/key.pem'"),
        ("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n", "not a PEM public key"),
    ],
)
def test_an_unusable_public_key_is_refused(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        verifier_from_settings(load_settings(environ={"CORTEX_JWT_PUBLIC_KEY": value}))


def test_auth_follows_disable_auth_unless_the_flag_says_otherwise() -> None:
    on, _ = parse_config('[cerebrium.deployment]\nname = "a"\ndisable_auth = false\n')
    off, _ = parse_config('[cerebrium.deployment]\nname = "a"\n')  # Cerebrium's default: true
    assert auth_enabled(load_settings(environ={}), on)
    assert not auth_enabled(load_settings(environ={}), off)
    assert auth_enabled(load_settings(environ={}, auth=True), off)
    assert not auth_enabled(load_settings(environ={"CORTEX_AUTH": "0"}), on)


def test_only_health_and_ready_are_open_unless_metadata_is_public() -> None:
    closed = Authenticator(verifier())
    opened = Authenticator(verifier(), public_metadata=True)
    assert closed.is_open("/health") and closed.is_open("/ready")
    assert not closed.is_open("/openapi.json") and not closed.is_open("/metrics")
    assert opened.is_open("/openapi.json") and opened.is_open("/docs") and opened.is_open("/metrics")
    assert not opened.is_open("/v4/p-auth/app/run")


def test_the_cache_keeps_a_token_only_until_it_expires() -> None:
    authenticator = Authenticator(verifier())
    token = header(hs256(claims(NOW, exp=int(NOW) + 60)))
    assert isinstance(authenticator.check(token, NOW), Principal)
    assert isinstance(authenticator.check(token, NOW + 60 + LEEWAY_SECONDS), Principal)
    expired = authenticator.check(token, NOW + 61 + LEEWAY_SECONDS)
    assert isinstance(expired, Denial) and "expired" in expired.message


def test_the_cache_is_bounded() -> None:
    authenticator = Authenticator(verifier(), max_cached=3)
    for n in range(10):
        authenticator.check(header(hs256(claims(NOW, sub=f"user-{n}"))), NOW)
    assert len(authenticator._accepted) <= 3


def test_a_minted_token_passes_the_server_it_is_minted_for() -> None:
    now = time.time()
    token = mint_token(SECRET, PROJECT, 60, "me", now, aud=AUDIENCE, iss=ISSUER)
    decision = authorize(header(token), verifier(), now)
    assert isinstance(decision, Principal)
    assert decision.subject == "me"
    assert decision.expires_at == int(now) + 60


@pytest.mark.parametrize(
    ("host", "enabled", "warns"),
    [
        ("127.0.0.1", False, False),
        ("localhost", False, False),
        ("::1", False, False),
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("192.168.1.5", False, True),
        ("my-host.example", False, True),
        ("0.0.0.0", True, False),
    ],
)
def test_auth_off_beyond_loopback_is_a_loud_warning(host: str, enabled: bool, warns: bool) -> None:
    warning = exposure_warning(host, enabled)
    assert (warning is not None) == warns
    if warning is not None:
        assert host in warning and "disable_auth = false" in warning
