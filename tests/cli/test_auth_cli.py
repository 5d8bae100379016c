"""`cortex token` and `cortex serve --auth` as a user runs them."""

from __future__ import annotations

import os
import subprocess

import httpx
import jwt

from tests.auth_tokens import SECRET
from tests.conftest import APPS, EXAMPLES, run_cortex


def test_token_mints_an_hs256_token_with_the_project_and_expiry():
    result = run_cortex(
        "token", "--project-id", "p-x", "--ttl", "120", "--sub", "ada", env={"CORTEX_JWT_SECRET": SECRET}
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["projectId"] == "p-x" and claims["sub"] == "ada"
    assert claims["exp"] - claims["iat"] == 120
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_token_without_a_secret_says_what_to_set():
    result = run_cortex("token", env={"CORTEX_JWT_SECRET": ""})  # empty counts as unset
    assert result.returncode == 1
    assert "CORTEX_JWT_SECRET is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_auth_and_no_key_refuses_to_start_naming_the_variables():
    env = {"CORTEX_JWT_SECRET": "", "CORTEX_JWT_PUBLIC_KEY": ""}  # empty counts as unset
    result = run_cortex("serve", str(APPS / "private"), "--port", "0", env=env)
    assert result.returncode == 1
    assert "CORTEX_JWT_SECRET" in result.stderr and "CORTEX_JWT_PUBLIC_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_printed_curl_line_works_with_a_minted_token(cortex_process):
    env = {"CORTEX_JWT_SECRET": SECRET}
    server = cortex_process("serve", str(EXAMPLES / "hello-world"), "--port", "0", "--auth", env=env)
    url = server.wait_ready()
    assert server.wait_for_line(r"^Authentication: on \(JWT bearer tokens, HS256\)")
    server.wait_for_line(r"export CORTEX_TOKEN=\$\(cortex token --project-id p-local\)")
    curl = server.wait_for_line(r"^\s+(curl -X POST \S+/run .*)$").group(1)
    assert curl.endswith('-H "Authorization: Bearer $CORTEX_TOKEN"')
    token = run_cortex("token", env=env).stdout.strip()
    ran = subprocess.run(
        ["bash", "-c", curl],
        capture_output=True,
        text=True,
        env={**os.environ, "CORTEX_TOKEN": token},
        timeout=30,
    )
    assert '"my_result":"hello"' in ran.stdout, ran.stdout + ran.stderr
    refused = httpx.post(f"{url}/v4/p-local/hello-world/run", json={"prompt": "x"})
    assert refused.status_code == 401
