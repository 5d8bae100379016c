"""JWT bearer tokens -> Principal; the 401-vs-403 decision as a pure function.

Cerebrium authenticates a call with `Authorization: Bearer <JWT>` whose `projectId` claim names
the project. Here the keys come from CORTEX_JWT_SECRET (HS256) and/or CORTEX_JWT_PUBLIC_KEY
(RS256 or ES256). Each key is pinned to the one algorithm of its type, so neither `alg: none` nor
an RS256 public key replayed as an HS256 secret can pass. Times are checked here, against a `now`
the caller passes, so the whole decision is testable without a clock.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from cortex.config import CerebriumConfig, Settings
from cortex.errors import ConfigError

MAX_TOKEN_BYTES = 8192  # longer is refused before any decoding (a JWT is usually < 1 kB)
LEEWAY_SECONDS = 30  # clock skew allowed on exp and nbf
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
PROJECT_CLAIM = "projectId"
REALM = 'Bearer realm="cortex"'

# Paths anyone may call: a load balancer's probes carry no token.
OPEN_PATHS = frozenset({"/health", "/ready"})
# Open too when CORTEX_PUBLIC_METADATA=1; protected by default as they describe the app.
METADATA_PATHS = frozenset({"/metrics", "/docs", "/openapi.json"})
DOCS_ASSETS_PREFIX = "/docs/assets/"  # Swagger UI's static files: open with the docs page


@dataclass(frozen=True)
class Principal:
    """Who a valid token says is calling."""

    project_id: str
    subject: str | None
    expires_at: float


@dataclass(frozen=True)
class Denial:
    """A refused call: 401 (who are you?) or 403 (not for this project)."""

    status: int
    code: str
    message: str
    www_authenticate: str


@dataclass(frozen=True)
class Verifier:
    """The keys and expectations a token is checked against, fixed at start."""

    keys: dict[str, Any]  # algorithm -> key; one algorithm per key type
    project_id: str
    audience: str | None = None
    issuer: str | None = None

    @property
    def algorithms(self) -> str:
        return ", ".join(self.keys)


def auth_enabled(settings: Settings, config: CerebriumConfig) -> bool:
    """`--auth`/CORTEX_AUTH when given, else cerebrium.toml's `disable_auth = false`."""
    return settings.auth if settings.auth is not None else not config.deployment.disable_auth


def verifier_from_settings(settings: Settings) -> Verifier:
    """The verifier for a server with auth on; ConfigError when no usable key is configured."""
    keys: dict[str, Any] = {}
    if settings.jwt_secret is not None:
        keys["HS256"] = hmac_secret(settings.jwt_secret)
    if settings.jwt_public_key is not None:
        algorithm, key = _public_key(settings.jwt_public_key)
        keys[algorithm] = key
    if not keys:
        raise ConfigError(
            "Authentication is on (disable_auth = false in cerebrium.toml, or --auth) but no key "
            "is configured. Set CORTEX_JWT_SECRET (HS256, at least 32 bytes) and/or "
            "CORTEX_JWT_PUBLIC_KEY (an RS256/ES256 public key: PEM text or a path to it)."
        )
    return Verifier(keys, settings.project_id, settings.jwt_audience, settings.jwt_issuer)


def hmac_secret(secret: str) -> bytes:
    key = secret.encode()
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"CORTEX_JWT_SECRET: expected at least {MIN_SECRET_BYTES} bytes, got {len(key)}. "
            "Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )
    return key


def _public_key(value: str) -> tuple[str, Any]:
    pem = value if value.lstrip().startswith("-----BEGIN") else _read_key_file(value)
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ConfigError(f"CORTEX_JWT_PUBLIC_KEY: not a PEM public key ({exc}).") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ConfigError(
                f"CORTEX_JWT_PUBLIC_KEY: expected an RSA key of 2048 bits or more, got {key.key_size}."
            )
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256", key
    raise ConfigError(
        "CORTEX_JWT_PUBLIC_KEY: expected an RSA (RS256) or P-256 (ES256) public key, "
        f"got {type(key).__name__}."
    )


def _read_key_file(value: str) -> str:
    path = Path(value).expanduser()
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"CORTEX_JWT_PUBLIC_KEY: expected PEM text or a readable file, got {value!r} ({reason})."
        ) from None


def authorize(header: bytes | None, verifier: Verifier, now: float) -> Principal | Denial:
    """The decision for one request's Authorization header."""
    token = _bearer_token(header)
    if isinstance(token, Denial):
        return token
    claims = _verified_claims(token, verifier, now)
    if isinstance(claims, Denial):
        return claims
    project = claims.get(PROJECT_CLAIM)
    if not isinstance(project, str) or not project:
        return _invalid(f"The token has no {PROJECT_CLAIM} claim naming the project.")
    if project != verifier.project_id:
        message = (
            f"This token is for project '{project}'; this server serves project "
            f"'{verifier.project_id}'. Use a token issued for '{verifier.project_id}'."
        )
        return Denial(403, "forbidden", message, f'{REALM}, error="insufficient_scope"')
    subject = claims.get("sub")
    return Principal(project, subject if isinstance(subject, str) else None, float(claims["exp"]))


def _bearer_token(header: bytes | None) -> str | Denial:
    if header is None or not header.strip():
        return Denial(
            401,
            "unauthorized",
            "This server requires authentication: send 'Authorization: Bearer <JWT>'.",
            REALM,
        )
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        shown = scheme[:20].decode("latin-1")
        return Denial(
            401,
            "unauthorized",
            f"Unsupported authorization scheme '{shown}': send 'Authorization: Bearer <JWT>'.",
            REALM,
        )
    token = token.strip()
    if not token:
        return Denial(401, "unauthorized", "The Authorization header has no token after 'Bearer'.", REALM)
    if len(token) > MAX_TOKEN_BYTES:
        return _invalid(f"The token is longer than {MAX_TOKEN_BYTES} bytes; a JWT should be far shorter.")
    try:
        return token.decode("ascii")
    except UnicodeDecodeError:
        return _invalid("The token is not a JWT (it has non-ASCII characters).")


def _verified_claims(token: str, verifier: Verifier, now: float) -> dict[str, Any] | Denial:
    try:
        algorithm = jwt.get_unverified_header(token).get("alg")
    except jwt.InvalidTokenError:
        return _invalid("The token is not a JWT (expected header.payload.signature in base64url).")
    key = verifier.keys.get(algorithm) if isinstance(algorithm, str) else None
    if key is None or not isinstance(algorithm, str):
        shown = repr(algorithm)[:40]
        return _invalid(f"The token is signed with {shown}; this server accepts {verifier.algorithms}.")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=verifier.audience,
            issuer=verifier.issuer,
            # exp, nbf and iat are checked below against `now`, with their own messages.
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": True},
        )
    except jwt.InvalidSignatureError:
        return _invalid("The token's signature does not match this server's key.")
    except jwt.InvalidAudienceError:
        if verifier.audience is None:
            return _invalid(
                "The token names an audience (aud) but this server expects none (CORTEX_JWT_AUDIENCE)."
            )
        return _invalid(f"The token's audience (aud) is not '{verifier.audience}'.")
    except jwt.MissingRequiredClaimError as exc:
        return _invalid(f"The token has no '{exc.claim}' claim; this server requires one.")
    except jwt.InvalidIssuerError:
        return _invalid(f"The token's issuer (iss) is not '{verifier.issuer}'.")
    except jwt.InvalidTokenError as exc:
        return _invalid(f"The token is invalid: {exc}.")
    return _check_times(claims, now)


def _check_times(claims: dict[str, Any], now: float) -> dict[str, Any] | Denial:
    expires = claims.get("exp")
    if expires is None:
        return _invalid("The token has no expiry (exp claim); this server requires one.")
    if not _is_number(expires):
        return _invalid(f"The token's exp claim must be a number of seconds, got {expires!r}.")
    if expires + LEEWAY_SECONDS < now:
        return _invalid(f"The token expired {round(now - expires)} s ago. Get a new one.")
    not_before = claims.get("nbf")
    if not_before is not None and not _is_number(not_before):
        return _invalid(f"The token's nbf claim must be a number of seconds, got {not_before!r}.")
    if not_before is not None and not_before - LEEWAY_SECONDS > now:
        return _invalid(f"The token is not valid yet (nbf is {round(not_before - now)} s from now).")
    return claims


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_UNSAFE_IN_HEADER = re.compile(r"[^\x20-\x7e]")


def _invalid(message: str) -> Denial:
    # RFC 6750: a token was sent and is no good. Parts of the message come from the token, so
    # only printable ASCII goes into the header (no CRLF, no quote ending the quoted string).
    description = _UNSAFE_IN_HEADER.sub("?", message).replace('"', "'")
    return Denial(
        401, "invalid_token", message, f'{REALM}, error="invalid_token", error_description="{description}"'
    )


@dataclass
class Authenticator:
    """`authorize` with a small cache: a busy client sends the same token on every call, and
    checking a signature costs more than the rest of the request. Only accepted tokens are kept,
    each until its own expiry."""

    verifier: Verifier
    public_metadata: bool = False
    max_cached: int = 4096
    _accepted: dict[bytes, Principal] = field(default_factory=dict)

    def is_open(self, path: str) -> bool:
        return path in OPEN_PATHS or (
            self.public_metadata and (path in METADATA_PATHS or path.startswith(DOCS_ASSETS_PREFIX))
        )

    def check(self, header: bytes | None, now: float | None = None) -> Principal | Denial:
        now = time.time() if now is None else now
        if header is not None:
            cached = self._accepted.get(header)
            if cached is not None and cached.expires_at + LEEWAY_SECONDS >= now:
                return cached
        decision = authorize(header, self.verifier, now)
        if isinstance(decision, Principal) and header is not None:
            if len(self._accepted) >= self.max_cached:
                self._accepted.clear()  # crude but bounded; refilled by the next calls
            self._accepted[header] = decision
        return decision


def mint_token(
    secret: str, project_id: str, ttl_seconds: int, subject: str | None, now: float, **claims: Any
) -> str:
    """An HS256 token for local use (`cortex token`), valid for `ttl_seconds` from `now`."""
    payload: dict[str, Any] = {PROJECT_CLAIM: project_id, "iat": int(now), "exp": int(now) + ttl_seconds}
    if subject is not None:
        payload["sub"] = subject
    payload.update({name: value for name, value in claims.items() if value is not None})
    return jwt.encode(payload, hmac_secret(secret), algorithm="HS256")


def exposure_warning(host: str, enabled: bool) -> str | None:
    """A loud line when anyone on the network could call the app without a token."""
    if enabled or _is_loopback(host):
        return None
    return (
        f"Authentication is OFF and the server listens on {host}, beyond this machine: anyone who "
        "can reach it can call every function. Set disable_auth = false in cerebrium.toml (or pass "
        "--auth) with CORTEX_JWT_SECRET, or listen on 127.0.0.1."
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
