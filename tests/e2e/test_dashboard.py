"""GET /: the dashboard page and the /dashboard.json it polls; rendered in headless Chromium."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import APPS, Served, serving, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed: apt-get install -y chromium (see README, Tests)"
)


@pytest.fixture
def jobs() -> Iterator[Served]:
    with serving(APPS / "jobs") as served:
        yield served


def make_calls(served: Served) -> str:
    """A sync call and an async run that fails; returns the run's id once it has failed."""
    with served.client() as client:
        assert client.post(f"{served.base}/add", json={"a": 1, "b": 2}).status_code == 200
        run_id: str = client.post(f"{served.base}/fail?async=true", json={}).json()["run_id"]
        poll = f"{served.base}/runs/{run_id}"
        wait_for(lambda: client.get(poll).json()["status"] == "failed", 15, "the run to fail")
    return run_id


def test_dashboard_json_has_functions_counts_percentiles_and_runs(jobs: Served) -> None:
    run_id = make_calls(jobs)
    data = httpx.get(jobs.url + "/dashboard.json").json()
    assert data["ready"] is True and data["in_flight"] == 0 and data["queued"] == 0
    functions = {f["name"]: f for f in data["functions"]}
    assert {"add", "fail", "words", "tokens"} <= set(functions)
    assert functions["add"]["ok"] == 1 and functions["add"]["errors"] == 0
    assert 0 < functions["add"]["p50_ms"] <= functions["add"]["p99_ms"]
    assert functions["words"]["p50_ms"] is None  # never called
    assert data["runs"][0]["run_id"] == run_id and data["runs"][0]["status"] == "failed"


def test_dashboard_page_is_self_contained(jobs: Served) -> None:
    page = httpx.get(jobs.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", page.text)
    assert not re.search(r'(?:src|href)="(?!/)', page.text), "only same-origin links"
    assert 'fetch("/dashboard.json"' in page.text


@needs_chromium
def test_dashboard_renders_functions_and_run_status_in_chromium(jobs: Served, tmp_path: Path) -> None:
    run_id = make_calls(jobs)
    browser = [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    browser += [f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*browser, "--dump-dom", jobs.url + "/"], capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for name in ("add", "fail", "words", "tokens"):
        assert f"<td>{name}</td>" in dom.stdout
    assert run_id in dom.stdout
    assert '<td class="failed">failed</td>' in dom.stdout
    shot = tmp_path / "dashboard.png"
    args = [*browser, f"--screenshot={shot}", "--window-size=1200,800", jobs.url + "/"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    width, height, colours = png_colours(shot.read_bytes())
    assert (width, height) == (1200, 800)
    assert len(colours) > 20, "the screenshot looks blank"


def png_colours(data: bytes) -> tuple[int, int, set[bytes]]:
    """Width, height and the distinct pixel values of an 8-bit RGB/RGBA PNG (no Pillow needed)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, idat, header = 8, b"", b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        position += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour_type in (2, 6), (depth, colour_type)
    pixel = 3 if colour_type == 2 else 4
    raw, stride = zlib.decompress(idat), width * pixel
    previous, colours = bytearray(stride), set()
    for row in range(height):
        start = row * (stride + 1)
        line = _unfilter(raw[start], bytearray(raw[start + 1 : start + 1 + stride]), previous, pixel)
        colours.update(bytes(line[i : i + pixel]) for i in range(0, stride, pixel * 7))  # sampled
        previous = line
    return width, height, colours


def _unfilter(kind: int, line: bytearray, above: bytearray, bpp: int) -> bytearray:
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up, corner = above[i], above[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            guess = left + up - corner
            pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - corner)
            best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            line[i] = (line[i] + best) & 0xFF
    return line
