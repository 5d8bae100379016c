"""Pack the running cortex into a wheel for an image's build context: offline, no build backend.

The files are the installed `cortex` package itself and the metadata (dependencies, extras, the
`cortex` script) comes from its installed distribution, so this works the same for an editable
checkout and for cortex installed from a wheel.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from importlib import metadata
from pathlib import Path

import cortex

_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # same files -> byte-identical wheel -> Docker layer cache hits


def wheel_name(version: str) -> str:
    return f"cortex-{version}-py3-none-any.whl"


def metadata_files(dist: metadata.Distribution, version: str) -> dict[str, bytes]:
    """dist-info files (without RECORD) for `dist`."""
    meta = dist.metadata
    lines = ["Metadata-Version: 2.1", "Name: cortex", f"Version: {version}"]
    lines += [f"{key}: {meta[key]}" for key in ("Summary", "Requires-Python") if key in meta]
    lines += [f"Provides-Extra: {extra}" for extra in meta.get_all("Provides-Extra") or []]
    lines += [f"Requires-Dist: {requirement}" for requirement in dist.requires or []]
    info = f"cortex-{version}.dist-info"
    return {
        f"{info}/METADATA": ("\n".join(lines) + "\n").encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: cortex\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": b"[console_scripts]\ncortex = cortex.cli:main\n",
    }


def package_files(package_dir: Path) -> dict[str, bytes]:
    """Every file of the package (sources, py.typed, data), bytecode left out."""
    files: dict[str, bytes] = {}
    for path in sorted(package_dir.rglob("*")):
        relative = path.relative_to(package_dir.parent)
        if path.is_dir() or _SKIP_DIRS & set(relative.parts) or path.suffix in _SKIP_SUFFIXES:
            continue
        files[relative.as_posix()] = path.read_bytes()
    return files


def record(files: dict[str, bytes], record_path: str) -> bytes:
    rows = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{name},sha256={digest},{len(data)}")
    rows.append(f"{record_path},,")
    return ("\n".join(rows) + "\n").encode()


def write_wheel(directory: Path) -> Path:
    """Write cortex-<version>-py3-none-any.whl of the running cortex into `directory`."""
    version = cortex.__version__
    files = package_files(Path(cortex.__file__).parent)
    files.update(metadata_files(metadata.distribution("cortex"), version))
    record_path = f"cortex-{version}.dist-info/RECORD"
    files[record_path] = record(files, record_path)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / wheel_name(version)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return target
