"""Where a solution zip comes from and what it says: the zip read from the project or downloaded once
from a URL pinned by sha256 (kept in a local cache), and its manifest (unique name, version, managed).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dynamics_provider.errors import LeadDestinationError

log = logging.getLogger("dynamics_provider")

SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_VERSION = re.compile(r"^\d{1,9}(\.\d{1,9}){1,3}$")
_UNIQUE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_SOLUTION_XML = 5 * 1024 * 1024
MAX_DOWNLOAD = 512 * 1024 * 1024


class SolutionZipError(LeadDestinationError):
    """The solution zip cannot be read (not a zip, no solution.xml, malformed manifest) or fetched."""


@dataclass(frozen=True)
class Manifest:
    unique_name: str
    version: str
    managed: bool


def read_manifest(data: bytes) -> Manifest:
    """Unique name, version and managed flag from the zip's solution.xml (hardened XML parser)."""
    import defusedxml.ElementTree as SafeET
    from defusedxml import DefusedXmlException

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            try:
                info = zf.getinfo("solution.xml")
            except KeyError:
                raise SolutionZipError("the zip has no solution.xml at its root: not a solution export") from None
            if info.file_size > _MAX_SOLUTION_XML:
                raise SolutionZipError("solution.xml is implausibly large")
            xml = zf.read(info)
    except zipfile.BadZipFile:
        raise SolutionZipError("the file is not a zip archive") from None
    try:
        root = SafeET.fromstring(xml)
    except (SafeET.ParseError, DefusedXmlException) as exc:
        raise SolutionZipError(f"solution.xml is not acceptable XML ({type(exc).__name__})") from None
    manifest = root.find("SolutionManifest")
    if root.tag != "ImportExportXml" or manifest is None:
        raise SolutionZipError("solution.xml lacks ImportExportXml/SolutionManifest")
    unique_name = (manifest.findtext("UniqueName") or "").strip()
    version = (manifest.findtext("Version") or "").strip()
    managed = (manifest.findtext("Managed") or "").strip()
    if not _UNIQUE_NAME.match(unique_name):
        raise SolutionZipError(f"solution.xml has an invalid UniqueName {unique_name!r}")
    if not _VERSION.match(version):
        raise SolutionZipError(f"solution.xml has an invalid Version {version!r} (expected a.b.c.d)")
    if managed not in ("0", "1"):
        raise SolutionZipError(f"solution.xml has an invalid Managed flag {managed!r} (expected 0 or 1)")
    return Manifest(unique_name, version, managed == "1")


def cache_dir() -> Path:
    base = os.environ.get("LEAD_DESTINATION_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lead-destination"
    )
    return Path(base) / "solutions"


def cached(sha256: str) -> bytes | None:
    """The cached download with this digest, or None (a cache entry that does not match is ignored)."""
    target = cache_dir() / f"{sha256.lower()}.zip"
    if not target.is_file():
        return None
    data = target.read_bytes()
    return data if hashlib.sha256(data).hexdigest() == sha256.lower() else None


def download(url: str, sha256: str, *, ca_bundle: str | None, allow_loopback: bool) -> bytes:
    """The zip at `url`, downloaded once into the cache (verified by sha256, written atomically)."""
    import requests

    from dynamics_provider.hosts import is_loopback_host

    sha256 = sha256.lower()
    if is_loopback_host(urlsplit(url).hostname or "") and not allow_loopback:
        raise SolutionZipError("refusing to download from a loopback address without lead-destination:allowLoopback")
    data = cached(sha256)
    if data is not None:
        return data
    log.info("SolutionImport: downloading %s", url.split("?", 1)[0])
    with requests.get(url, stream=True, timeout=(10, 120), verify=ca_bundle or True) as response:
        response.raise_for_status()
        digest, chunks, size = hashlib.sha256(), [], 0
        for chunk in response.iter_content(1 << 20):
            size += len(chunk)
            if size > MAX_DOWNLOAD:
                raise SolutionZipError("the download exceeds 512 MiB; refusing it")
            digest.update(chunk)
            chunks.append(chunk)
    if digest.hexdigest() != sha256:
        raise SolutionZipError(
            f"the downloaded file has sha256 {digest.hexdigest()}, not the pinned {sha256}; refusing it"
        )
    data = b"".join(chunks)
    target = cache_dir() / f"{sha256}.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, target)
    return data
