"""Keys and tokens for the auth tests: the valid ones and every way a token can be wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SECRET = "cortex-tests-jwt-secret-0123456789abcdef"  # 40 bytes
OTHER_SECRET = "another-secret-that-signs-nothing-valid-here"
PROJECT = "p-auth"
AUDIENCE = "cortex-tests"
ISSUER = "https://issuer.test"


@dataclass(frozen=True)
class Keys:
    rsa_private: rsa.RSAPrivateKey
    rsa_public_pem: str
    ec_private: ec.EllipticCurvePrivateKey
    ec_public_pem: str
    other_rsa_private: rsa.RSAPrivateKey


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@cache
def keys() -> Keys:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Keys(rsa_key, _public_pem(rsa_key), ec_key, _public_pem(ec_key), other)


def claims(now: float | None = None, **changes: Any) -> dict[str, Any]:
    """Claims a server for PROJECT with AUDIENCE and ISSUER accepts; `name=None` drops a claim."""
    now = time.time() if now is None else now
    base: dict[str, Any] = {
        "projectId": PROJECT,
        "sub": "tester",
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": int(now),
        "exp": int(now) + 600,
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def hs256(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def rs256(payload: dict[str, Any], key: rsa.RSAPrivateKey | None = None) -> str:
    return jwt.encode(payload, key or keys().rsa_private, algorithm="RS256")


def es256(payload: dict[str, Any]) -> str:
    return jwt.encode(payload, keys().ec_private, algorithm="ES256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any]) -> str:
    """`alg: none`: a token anyone can write."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(payload).encode())}."


def hs256_with_public_key(payload: dict[str, Any]) -> str:
    """The RS->HS confusion attack: HMAC keyed with the server's (public) RSA key."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(payload).encode())
    signing_input = f"{header}.{body}".encode()
    signature = hmac.new(keys().rsa_public_pem.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


def tampered(token: str, **changes: Any) -> str:
    """A valid token whose payload was edited after signing."""
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    decoded.update(changes)
    return f"{header}.{_b64(json.dumps(decoded).encode())}.{signature}"


def bad_tokens(now: float | None = None) -> dict[str, str | None]:
    """Every Authorization header value that must be refused with 401 (None: no header)."""
    now = time.time() if now is None else now
    good = claims(now)
    return {
        "missing": None,
        "basic scheme": "Basic " + base64.b64encode(b"user:password").decode(),
        "bearer without token": "Bearer",
        "garbage": "Bearer not-a-jwt",
        "garbage with dots": "Bearer a.b.c",
        "alg none": "Bearer " + unsigned(good),
        "rs->hs confusion": "Bearer " + hs256_with_public_key(good),
        "tampered hs256": "Bearer "
        + tampered(hs256(good), projectId=PROJECT, sub="admin", exp=int(now) + 99999),
        "tampered rs256": "Bearer " + tampered(rs256(good), sub="admin"),
        "wrong hs256 secret": "Bearer " + hs256(good, OTHER_SECRET),
        "wrong rsa key": "Bearer " + rs256(good, keys().other_rsa_private),
        "expired": "Bearer " + hs256(claims(now, iat=int(now) - 7200, exp=int(now) - 3600)),
        "nbf in the future": "Bearer " + hs256(claims(now, nbf=int(now) + 3600)),
        "missing exp": "Bearer " + hs256(claims(now, exp=None)),
        "exp not a number": "Bearer " + hs256(claims(now, exp="tomorrow")),
        "wrong audience": "Bearer " + hs256(claims(now, aud="someone-else")),
        "missing audience": "Bearer " + hs256(claims(now, aud=None)),
        "wrong issuer": "Bearer " + hs256(claims(now, iss="https://evil.test")),
        "missing projectId": "Bearer " + hs256(claims(now, projectId=None)),
        "10 kB token": "Bearer " + hs256(claims(now, padding="x" * 10_000)),
    }
