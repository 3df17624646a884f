"""Build and parse solution zips for the sandbox: a representative Lead Writer managed solution
(not Microsoft's file) and a hardened reader (defusedxml) of solution.xml and customizations.xml.
The dynamic providers parse zips with their own code; this module is the sandbox's.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

DEFAULT_UNIQUE_NAME = "MicrosoftMarketplacesLeadIntegrationSolution"
DEFAULT_ROLE_NAME = "Microsoft Marketplace Lead Writer"
DEPTHS = ("Basic", "Local", "Deep", "Global")
# The Lead Writer role "only has permissions to write leads and to track the solution version for
# compatibility" (Microsoft's procedure, docs/sandbox.md "The Lead Writer's lead plug-in")
DEFAULT_PRIVILEGES: tuple[tuple[str, str], ...] = (
    ("prvCreateLead", "Global"),
    ("prvReadLead", "Global"),
    ("prvWriteLead", "Global"),
    ("prvAppendToLead", "Global"),
    ("prvReadSolution", "Global"),
)
_ID_NAMESPACE = uuid.UUID("6f1d7a52-5b0e-4d59-9f43-2c1f0e5a7b10")
_VERSION = re.compile(r"^\d{1,9}(\.\d{1,9}){1,3}$")
_MAX_MEMBER_BYTES = 20 * 1024 * 1024  # zip-bomb guard per member


@dataclass(frozen=True)
class SolutionManifest:
    unique_name: str
    version: str
    managed: bool
    roles: list[dict] = field(default_factory=list)  # [{name, id, privileges: [{name, level}]}]


def role_id_for(unique_name: str, role_name: str) -> str:
    """Stable role id per (solution, role): every version of the built zip declares the same id."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{unique_name}/{role_name}"))


def version_tuple(version: str) -> tuple[int, ...]:
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ValueError(f"invalid solution version {version!r}: expected major.minor[.build[.revision]] numbers")
    parts = [int(p) for p in version.split(".")]
    return tuple(parts + [0] * (4 - len(parts)))


def build_solution_zip(
    version: str = "1.0.0.0",
    unique_name: str = DEFAULT_UNIQUE_NAME,
    managed: bool = True,
    role_name: str = DEFAULT_ROLE_NAME,
    privileges: list[dict] | list[tuple[str, str]] | None = None,
) -> bytes:
    """A representative solution zip with one security role (component type 20)."""
    version_tuple(version)
    privs = [
        (p["name"], p.get("level") or p.get("depth")) if isinstance(p, dict) else (p[0], p[1])
        for p in (privileges if privileges is not None else DEFAULT_PRIVILEGES)
    ]
    for name, level in privs:
        if level not in DEPTHS:
            raise ValueError(f"privilege {name}: level {level!r} is not one of {', '.join(DEPTHS)}")
    role_id = role_id_for(unique_name, role_name)
    content_types = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="xml" ContentType="application/octet-stream" /></Types>'
    )
    solution_xml = f"""<?xml version="1.0" encoding="utf-8"?>
<ImportExportXml version="9.2.0.0" SolutionPackageVersion="9.2" languagecode="1033" generatedBy="CrmLive">
  <SolutionManifest>
    <UniqueName>{unique_name}</UniqueName>
    <LocalizedNames><LocalizedName description={quoteattr(unique_name)} languagecode="1033" /></LocalizedNames>
    <Descriptions><Description description="Representative stand-in built by the lead-destination sandbox for tests and the dev stack. It is NOT Microsoft's MicrosoftMarketplacesLeadIntegrationSolution file." languagecode="1033" /></Descriptions>
    <Version>{version}</Version>
    <Managed>{1 if managed else 0}</Managed>
    <Publisher>
      <UniqueName>sandboxpublisher</UniqueName>
      <LocalizedNames><LocalizedName description="Sandbox Publisher" languagecode="1033" /></LocalizedNames>
      <CustomizationPrefix>sbx</CustomizationPrefix>
      <CustomizationOptionValuePrefix>10000</CustomizationOptionValuePrefix>
    </Publisher>
    <RootComponents>
      <RootComponent type="20" id="{{{role_id}}}" behavior="0" />
    </RootComponents>
    <MissingDependencies />
  </SolutionManifest>
</ImportExportXml>
"""
    role_privs = "\n".join(
        f"          <RolePrivilege name={quoteattr(n)} level={quoteattr(lv)} />" for n, lv in privs
    )
    customizations_xml = f"""<?xml version="1.0" encoding="utf-8"?>
<ImportExportXml xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <Entities />
  <Roles>
    <Role id="{{{role_id}}}" name={quoteattr(role_name)}>
      <RolePrivileges>
{role_privs}
      </RolePrivileges>
    </Role>
  </Roles>
  <Workflows />
  <Languages><Language>1033</Language></Languages>
</ImportExportXml>
"""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", content_types)
        zf.writestr("solution.xml", solution_xml)
        zf.writestr("customizations.xml", customizations_xml)
    return buf.getvalue()


def _read_member(zf: zipfile.ZipFile, name: str) -> bytes | None:
    try:
        info = zf.getinfo(name)
    except KeyError:
        return None
    if info.file_size > _MAX_MEMBER_BYTES:
        raise ValueError(f"{name} is too large ({info.file_size} bytes)")
    with zf.open(info) as fh:
        data = fh.read(_MAX_MEMBER_BYTES + 1)
    if len(data) > _MAX_MEMBER_BYTES:
        raise ValueError(f"{name} is too large")
    return data


def _parse_xml(name: str, data: bytes):
    try:
        return SafeET.fromstring(data)
    except DefusedXmlException as exc:
        raise ValueError(f"{name} contains forbidden XML constructs ({type(exc).__name__})") from None
    except SafeET.ParseError as exc:
        raise ValueError(f"{name} is not well-formed XML: {exc}") from None


def _text(root, path: str) -> str | None:
    node = root.find(path)
    return node.text.strip() if node is not None and node.text else None


def parse_solution_zip(data: bytes) -> SolutionManifest:
    """Read the manifest and the roles a solution zip declares; ValueError says what is wrong."""
    if not isinstance(data, bytes | bytearray) or not zipfile.is_zipfile(io.BytesIO(data)):
        raise ValueError("the file is not a zip archive")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ValueError(f"the file is not a valid zip archive: {exc}") from None
    with zf:
        try:
            solution = _read_member(zf, "solution.xml")
            customizations = _read_member(zf, "customizations.xml")
        except zipfile.BadZipFile as exc:
            raise ValueError(f"the zip archive is damaged: {exc}") from None
    if solution is None:
        raise ValueError("solution.xml is missing from the zip")
    root = _parse_xml("solution.xml", solution)
    manifest = root.find("SolutionManifest")
    if root.tag != "ImportExportXml" or manifest is None:
        raise ValueError("solution.xml has no ImportExportXml/SolutionManifest")
    unique_name = _text(manifest, "UniqueName")
    if not unique_name:
        raise ValueError("solution.xml has no SolutionManifest/UniqueName")
    version = _text(manifest, "Version") or ""
    version_tuple(version)
    managed_text = _text(manifest, "Managed")
    if managed_text not in ("0", "1"):
        raise ValueError(f"solution.xml Managed must be 0 or 1, got {managed_text!r}")
    roles: list[dict] = []
    if customizations is not None:
        croot = _parse_xml("customizations.xml", customizations)
        for role in croot.findall("./Roles/Role"):
            name = role.get("name")
            raw_id = (role.get("id") or "").strip("{} ")
            try:
                role_id = str(uuid.UUID(raw_id))
            except ValueError:
                raise ValueError(f"customizations.xml role {name!r} has an invalid id {raw_id!r}") from None
            privs = []
            for priv in role.findall("./RolePrivileges/RolePrivilege"):
                level = priv.get("level")
                if level not in DEPTHS:
                    raise ValueError(f"role {name!r} privilege {priv.get('name')!r}: invalid level {level!r}")
                privs.append({"name": priv.get("name"), "level": level})
            roles.append({"name": name, "id": role_id, "privileges": privs})
    return SolutionManifest(unique_name, version, managed_text == "1", roles)


def default_zip_path(version: str, managed: bool = True, unique_name: str = DEFAULT_UNIQUE_NAME,
                     state_dir: str | Path = ".sandbox") -> Path:
    kind = "managed" if managed else "unmanaged"
    return Path(state_dir) / "solutions" / f"{unique_name}_{version.replace('.', '_')}_{kind}.zip"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox build-solution",
                                     description="Write a representative Lead Writer solution zip (not Microsoft's file).")
    parser.add_argument("--version", default="1.0.0.0")
    parser.add_argument("--unmanaged", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    try:
        data = build_solution_zip(version=args.version, managed=not args.unmanaged)
    except ValueError as exc:
        print(f"build-solution: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else default_zip_path(args.version, not args.unmanaged)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(out)
    return 0
