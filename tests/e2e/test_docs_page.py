"""GET /docs: Swagger UI for /openapi.json, every asset served by cortex itself (no CDN)."""

from __future__ import annotations

import re

import httpx

from tests.auth_tokens import claims, hs256
from tests.conftest import APPS, serving
from tests.e2e.test_auth import AUTH_SETTINGS

EXTERNAL = re.compile(r"https?://")
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


def test_docs_page_and_its_assets_are_served_offline() -> None:
    with serving(APPS / "echo") as served, served.client() as client:
        page = client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert not EXTERNAL.search(page.text), "the page must load nothing from outside"
        assert 'url: "/openapi.json"' in page.text and "validatorUrl: null" in page.text
        references = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert len(references) == 3
        for reference in references:
            assert reference.startswith("/docs/assets/"), reference
            asset = client.get(reference)
            assert asset.status_code == 200, reference
            suffix = reference[reference.rindex(".") :]
            assert asset.headers["content-type"].startswith(ASSET_TYPES[suffix])
            assert len(asset.content) > 500
        assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").text
        css = client.get("/docs/assets/swagger-ui.css").text
        assert ".swagger-ui" in css and not re.search(r"url\(\s*['\"]?https?:", css)
        assert client.get("/docs/assets/index.html").status_code == 404  # only what the page uses
        assert client.get("/docs/assets/..%2f..%2fpyproject.toml").status_code == 404


def test_docs_with_auth_need_public_metadata_and_offer_bearer_auth() -> None:
    with serving(APPS / "echo", **AUTH_SETTINGS) as closed:
        assert httpx.get(closed.url + "/docs").status_code == 401
        assert httpx.get(closed.url + "/docs/assets/swagger-ui.css").status_code == 401
    with serving(APPS / "echo", public_metadata=True, **AUTH_SETTINGS) as served, served.client() as client:
        assert client.get("/docs").status_code == 200
        assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
        document = client.get("/openapi.json").json()
        assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
        # What Swagger UI's Authorize button then sends with "Try it out":
        token = hs256(claims())
        call = client.post(f"{served.base}/predict", json={"prompt": "hi"})
        assert call.status_code == 401
        call = client.post(
            f"{served.base}/predict", json={"prompt": "hi"}, headers={"authorization": f"Bearer {token}"}
        )
        assert call.status_code == 200
