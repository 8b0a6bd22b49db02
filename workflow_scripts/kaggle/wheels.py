"""The wheels a Kaggle package ships: oofline's own code as a wheel, and the pinned packages a Kaggle image may
lack, fetched by `pip download` when the package is built (the notebook installs them with no network).

`wheels:` entries are requirement pins (`bitsandbytes==0.45.5`, downloaded for Kaggle's Python and platform)
or paths of local .whl files (copied). wheels/requirements.txt lists what the notebook installs.

Platforms: pip download matches a wheel's platform tag against the `--platform` values exactly (it expands only
manylinux2014 and manylinux2010 to the older legacy tags), so one tag misses wheels built for a newer glibc that the
image still runs (bitsandbytes >= 0.43 publishes only `manylinux_2_24`). `manylinux_platform_tags` lists every tag a
glibc accepts, newest first: the default asks for all those of Kaggle's image.
"""
from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Sequence

from workflow_scripts.errors import OoflineError

OOFLINE_DISTRIBUTION = "oofline"
OOFLINE_VERSION = "0.1.0"
REQUIREMENTS_FILE = "requirements.txt"
# fixed zip timestamps: the same code gives the same wheel bytes
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# Kaggle's Python image (Ubuntu 20.04): its glibc decides which manylinux wheels run there
KAGGLE_GLIBC = "2.31"
KAGGLE_ARCH = "x86_64"
WHEEL_NAME = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(package_dir: str | Path, distribution: str, version: str, out_dir: str | Path,
                summary: str = "") -> Path:
    """A pure-Python wheel of one top-level package folder (its .py files and data, no caches), no
    dependencies declared: the notebook installs with --no-deps, the Kaggle image brings torch and friends."""
    package_dir = Path(package_dir)
    if not (package_dir / "__init__.py").exists():
        raise OoflineError(f"{package_dir}: not a Python package (no __init__.py)")
    files = sorted(path for path in package_dir.rglob("*") if path.is_file()
                   and "__pycache__" not in path.parts and not path.name.startswith(".") and path.suffix != ".pyc")
    stem = re.sub(r"[-_.]+", "_", distribution)  # a wheel's file and dist-info names spell the name with _
    dist_info = f"{stem}-{version}.dist-info"
    entries = [(f"{package_dir.name}/{path.relative_to(package_dir).as_posix()}", path.read_bytes()) for path in files]
    entries.append((f"{dist_info}/METADATA", (f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n"
                                              f"Summary: {summary}\n").encode()))
    entries.append((f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: oofline\nRoot-Is-Purelib: true\n"
                                          b"Tag: py3-none-any\n"))
    entries.append((f"{dist_info}/top_level.txt", f"{package_dir.name}\n".encode()))
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in entries) + f"{dist_info}/RECORD,,\n"
    entries.append((f"{dist_info}/RECORD", record.encode()))
    out = Path(out_dir) / f"{stem}-{version}-py3-none-any.whl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return out


def build_oofline_wheel(out_dir: str | Path) -> Path:
    """oofline's inference code (the whole workflow_scripts package) as a wheel."""
    package_dir = Path(__file__).resolve().parents[1]
    return build_wheel(package_dir, OOFLINE_DISTRIBUTION, OOFLINE_VERSION, out_dir,
                       summary="oofline's steps, as a Kaggle package's notebook runs them")


def requirement_of_wheel(path: Path) -> str:
    match = WHEEL_NAME.match(path.name)
    if not match:
        raise OoflineError(f"{path}: not a wheel file name (name-version-python-abi-platform.whl)")
    return f"{match.group('name').replace('_', '-')}=={match.group('version')}"


def manylinux_platform_tags(glibc: str = KAGGLE_GLIBC, arch: str = KAGGLE_ARCH) -> list[str]:
    """Every platform tag a Linux with this glibc runs (PEP 600 `manylinux_2_N` down to 2_5, the legacy aliases
    manylinux2014 / 2010 / 1 beside their 2_17 / 2_12 / 2_5, and `linux`), newest first, for pip's --platform."""
    match = re.fullmatch(r"2\.(\d+)", str(glibc))
    if not match:
        raise OoflineError(f"config: kaggle glibc: {glibc!r} is not a glibc version like 2.31")
    aliases = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags = []
    for minor in range(int(match.group(1)), 4, -1):
        tags.append(f"manylinux_2_{minor}_{arch}")
        if minor in aliases:
            tags.append(f"{aliases[minor]}_{arch}")
    return tags + [f"linux_{arch}"]


def wheel_runs_on(filename: str, python_version: str, platforms: Sequence[str]) -> bool:
    """Whether a wheel file (by its name's tags) installs on this Python (`3.11`) and one of these platform tags:
    the check pip download makes, for a wheel a user hands over as a path."""
    from packaging.tags import Tag
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        _, _, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    major, minor = (int(part) for part in python_version.split(".")[:2])
    interpreters = {f"cp{major}{minor}", f"py{major}{minor}", f"py{major}", "py2.py3"}
    abis = {f"cp{major}{minor}", "abi3", "none"}
    accepted = set(platforms) | {"any"}
    return any(tag.interpreter in interpreters and tag.abi in abis and tag.platform in accepted for tag in tags
               if isinstance(tag, Tag))


def ship_wheels(entries: Sequence[str], out_dir: str | Path, python_version: str, platform: str | Sequence[str],
                base_dir: str | Path = ".") -> list[str]:
    """Copy local wheels and `pip download` pinned ones into out_dir (never at notebook time); returns the
    requirement lines the notebook installs, oofline's own first. `platform`: a tag or tags (manylinux_platform_tags)."""
    platforms = [platform] if isinstance(platform, str) else list(platform)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    requirements = [requirement_of_wheel(build_oofline_wheel(out_dir))]
    pins = []
    for entry in entries:
        if entry.endswith(".whl"):
            path = Path(entry) if Path(entry).is_absolute() else Path(base_dir) / entry
            if not path.exists():
                raise OoflineError(f"config: kaggle wheels: {entry} does not exist")
            if not wheel_runs_on(path.name, python_version, platforms):
                raise OoflineError(f"config: kaggle wheels: {path.name} does not install on Python {python_version} "
                                   f"with platform tags {', '.join(platforms[:3])}, ... (the Kaggle image's)")
            shutil.copy2(path, out_dir / path.name)
            requirements.append(requirement_of_wheel(path))
        else:
            if "==" not in entry:
                raise OoflineError(f"config: kaggle wheels: {entry!r} is not pinned (write name==version, so the "
                                   "package installs what was tested)")
            pins.append(entry)
    if pins:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--python-version", python_version, *(f"--platform={tag}" for tag in platforms),
                   "--dest", str(out_dir), *pins]
        print("wheels: " + " ".join(command), flush=True)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            reason = " ".join(result.stderr.split())[-400:]
            raise OoflineError(f"config: kaggle wheels: pip download {' '.join(pins)} failed: {reason}")
        requirements += pins
    (out_dir / REQUIREMENTS_FILE).write_text("".join(f"{line}\n" for line in requirements))
    return requirements
