"""Builds outpost-agent_VERSION_amd64.deb: the agent's own Python environment, unit, config."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections import defaultdict
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]
DEBIAN_FILES = REPO / "packaging" / "debian"
UNIT = REPO / "packaging" / "systemd" / "outpost-agent.service"
PREFIX = PurePosixPath("/opt/outpost-agent")
PACKAGE = "outpost-agent"
# Debian 12's interpreter: the environment links to it, and the wheels are built for it.
DEFAULT_PYTHON = Path("/usr/bin/python3.11")
PACKAGE_DEPENDS = ("python3.11 (>= 3.11.2)", "adduser", "init-system-helpers (>= 1.52)")
# What bin/ keeps: the agent's command and the interpreter links. The other console scripts
# of the dependencies (faker, litestar, f2py, ...) are not the agent's interface.
KEPT_SCRIPTS = frozenset({"outpost-agent", "python", "python3", "python3.11"})
MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")
# What the project's wheel is built from (pyproject.toml's package dirs and readme)
PROJECT_SOURCES = ("pyproject.toml", "README.md", "agent", "common", "controlplane", "protos")
UNBUILT = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
# xz: smallest; gzip: several times faster to build. (zstd: lintian 2.116 refuses it, and
# dpkg before Debian 12 cannot read it.)
COMPRESSIONS = ("xz", "gzip")
# Debian policy 5.6.12: [epoch:]upstream[-revision]
DEBIAN_VERSION = re.compile(r"(?:\d+:)?\d[A-Za-z0-9.+~]*(?:-[A-Za-z0-9.+~]+)?")
SHARED_LIBRARY = re.compile(r"(lib.+?\.so)((?:\.\d+)*)")


class BuildError(Exception):
    """The package cannot be built; the message says why."""


def project_version() -> str:
    """The upstream version in pyproject.toml."""
    document = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return str(document["project"]["version"])


def _run(command: list[str | Path], cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, check=False, cwd=cwd
    )
    if result.returncode != 0:
        shown = " ".join(str(part) for part in command)
        raise BuildError(f"{shown} failed ({result.returncode}):\n{result.stderr.strip()}")
    return result


def build_own_wheel(directory: Path) -> Path:
    """The project's wheel, built offline from this checkout (never an older one), in a copy
    of its sources: builds running side by side never share a build directory."""
    source = directory / "source"
    for item in PROJECT_SOURCES:
        if (REPO / item).is_dir():
            shutil.copytree(REPO / item, source / item, ignore=UNBUILT)
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / item, source / item)
    _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--wheel-dir", directory, source]
    )  # fmt: skip
    wheels = sorted(directory.glob("outpost-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one outpost wheel in {directory}, found {len(wheels)}")
    return wheels[0]


def install_environment(root: Path, python: Path, wheelhouse: Path, own_wheel: Path) -> Path:
    """A virtual environment at PREFIX inside `root`, filled from the wheelhouse only."""
    environment = root / PREFIX.relative_to("/")
    environment.parent.mkdir(parents=True)
    _run([python, "-m", "venv", "--without-pip", environment])
    _run(
        [sys.executable, "-m", "pip", "--python", environment / "bin" / "python", "install",
         "--quiet", "--no-index", "--find-links", wheelhouse, "--no-compile",
         "--no-warn-script-location", own_wheel]
    )  # fmt: skip
    return environment


def relocate(environment: Path) -> None:
    """Makes the environment work from PREFIX: scripts, pyvenv.cfg and metadata name PREFIX,
    not the build directory; fails if any file still names the build directory."""
    built_at = str(environment)
    for script in (environment / "bin").iterdir():
        if script.name not in KEPT_SCRIPTS:
            script.unlink()
        elif not script.is_symlink():
            text = script.read_text(encoding="utf-8")
            script.write_text(text.replace(built_at, str(PREFIX)), encoding="utf-8")
    config = environment / "pyvenv.cfg"
    config.write_text(config.read_text(encoding="utf-8").replace(built_at, str(PREFIX)))
    for direct_url in environment.glob("lib/python3*/site-packages/*.dist-info/direct_url.json"):
        direct_url.unlink()  # names the wheel's path on the build machine
        record = direct_url.parent / "RECORD"
        lines = record.read_text(encoding="utf-8").splitlines(keepends=True)
        record.write_text("".join(x for x in lines if "/direct_url.json," not in x))
    needle = built_at.encode()
    for path in environment.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            raise BuildError(f"{path} still names the build directory {built_at}")


def link_duplicate_libraries(environment: Path) -> None:
    """Wheels cannot hold symlinks, so libfoo.so, libfoo.so.0 and libfoo.so.0.1 arrive as three
    copies; the shorter names become relative links to the longest."""
    for directory in {p.parent for p in environment.rglob("lib*.so*") if p.is_file()}:
        groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
        for path in directory.iterdir():
            match = SHARED_LIBRARY.fullmatch(path.name)
            if match and path.is_file() and not path.is_symlink():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                groups[(match.group(1), digest)].append(path)
        for copies in groups.values():
            target = max(copies, key=lambda p: len(p.name))
            for copy in copies:
                if copy != target:
                    copy.unlink()
                    copy.symlink_to(target.name)


def normalize_permissions(root: Path) -> None:
    """Directories 0755, files 0644, the environment's bin/ scripts 0755 (wheels carry
    whatever modes their builders had)."""
    bin_dir = root / PREFIX.relative_to("/") / "bin"
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o755)
        else:
            path.chmod(0o755 if path.parent == bin_dir else 0o644)


def shared_library_depends(root: Path) -> list[str]:
    """The Debian packages the environment's ELF files link against (dpkg-shlibdeps), the
    environment's own libraries excepted."""
    elf_files = [p for p in root.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    private_dirs = sorted({p.parent for p in elf_files})
    with tempfile.TemporaryDirectory() as scratch:
        control = Path(scratch) / "debian" / "control"
        control.parent.mkdir()
        control.write_text(f"Source: outpost\n\nPackage: {PACKAGE}\nArchitecture: amd64\n")
        result = _run(
            ["dpkg-shlibdeps", "-O", "--ignore-missing-info",
             *[f"-l{d}" for d in private_dirs], *elf_files],
            cwd=scratch,
        )  # fmt: skip
    for line in result.stdout.splitlines():
        if line.startswith("shlibs:Depends="):
            return [d.strip() for d in line.split("=", 1)[1].split(",") if d.strip()]
    return []


def _changelog(version: str, when: datetime) -> bytes:
    text = (
        f"outpost ({version}) unstable; urgency=medium\n\n"
        f"  * Outpost agent {version}; see /usr/share/doc/{PACKAGE}/changelog.gz.\n\n"
        f" -- Outpost developers <outpost@example.org>  {format_datetime(when)}\n"
    )
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def add_system_files(root: Path, version: str, when: datetime) -> None:
    """The unit, the default config (a conffile), docs, copyright and lintian overrides."""
    unit_dir = root / "lib" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    shutil.copyfile(UNIT, unit_dir / UNIT.name)
    config_dir = root / "etc" / "outpost"
    config_dir.mkdir(parents=True)
    shutil.copyfile(DEBIAN_FILES / "agent.toml", config_dir / "agent.toml")
    docs = root / "usr" / "share" / "doc" / PACKAGE
    docs.mkdir(parents=True)
    shutil.copyfile(DEBIAN_FILES / "copyright", docs / "copyright")
    shutil.copyfile(REPO / "README.md", docs / "README.md")
    changelog = (REPO / "CHANGELOG.md").read_bytes()
    (docs / "changelog.gz").write_bytes(gzip.compress(changelog, compresslevel=9, mtime=0))
    (docs / "changelog.Debian.gz").write_bytes(_changelog(version, when))
    overrides = root / "usr" / "share" / "lintian" / "overrides"
    overrides.mkdir(parents=True)
    shutil.copyfile(DEBIAN_FILES / "lintian-overrides", overrides / PACKAGE)


def installed_size_kib(root: Path) -> int:
    """As dpkg-gencontrol counts: each file's size in KiB rounded up, 1 per link or directory."""
    total = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += -(-path.stat().st_size // 1024)
        else:
            total += 1
    return total


def write_control(root: Path, version: str, depends: list[str]) -> None:
    """DEBIAN/: control, conffiles, md5sums and the maintainer scripts."""
    control_dir = root / "DEBIAN"
    conffiles = (DEBIAN_FILES / "conffiles").read_text(encoding="utf-8")
    sums = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        relative = path.relative_to(root).as_posix()
        if f"/{relative}" not in conffiles.split():
            sums.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {relative}\n")
    size = installed_size_kib(root)
    control_dir.mkdir(mode=0o755)
    template = (DEBIAN_FILES / "control.in").read_text(encoding="utf-8")
    all_depends = ", ".join([*PACKAGE_DEPENDS, *depends])
    control = template.format(version=version, installed_size=size, depends=all_depends)
    (control_dir / "control").write_text(control, encoding="utf-8")
    (control_dir / "conffiles").write_text(conffiles, encoding="utf-8")
    (control_dir / "md5sums").write_text("".join(sums), encoding="utf-8")
    for name in MAINTAINER_SCRIPTS:
        shutil.copyfile(DEBIAN_FILES / name, control_dir / name)
        (control_dir / name).chmod(0o755)
    for name in ("control", "conffiles", "md5sums"):
        (control_dir / name).chmod(0o644)


def build(
    *,
    version: str,
    wheelhouse: Path,
    out_dir: Path,
    when: datetime,
    python: Path = DEFAULT_PYTHON,
    compression: str = "xz",
) -> Path:
    """Builds the package into `out_dir`; answers its path. `when` dates its changelog."""
    if not DEBIAN_VERSION.fullmatch(version):
        raise BuildError(f"{version!r} is not a Debian version (e.g. 0.1.0-1)")
    if compression not in COMPRESSIONS:
        raise BuildError(f"compression must be one of {', '.join(COMPRESSIONS)}")
    if not any(wheelhouse.glob("*.whl")):
        raise BuildError(f"no wheels in {wheelhouse}: run `make wheelhouse` first")
    if not os.access(python, os.X_OK):
        raise BuildError(f"{python} is not an executable Python (Debian's python3.11 package)")
    if shutil.which("dpkg-deb") is None or shutil.which("dpkg-shlibdeps") is None:
        raise BuildError("dpkg-deb and dpkg-shlibdeps are needed (Debian's dpkg-dev package)")
    out_dir.mkdir(parents=True, exist_ok=True)
    deb = out_dir / f"{PACKAGE}_{version.split(':')[-1]}_amd64.deb"
    with tempfile.TemporaryDirectory(prefix="outpost-deb-") as scratch:
        root = Path(scratch) / "root"
        own_wheel = build_own_wheel(Path(scratch) / "wheel")
        environment = install_environment(root, python, wheelhouse, own_wheel)
        relocate(environment)
        link_duplicate_libraries(environment)
        add_system_files(root, version, when)
        normalize_permissions(root)
        write_control(root, version, shared_library_depends(root))
        _run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", root, deb])
    return deb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--version", help="Debian version (default: pyproject's version-1)")
    parser.add_argument(
        "--wheelhouse", type=Path, default=REPO / "dist" / "wheelhouse",
        help="the agent's wheels (`make wheelhouse`); nothing is downloaded",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="where the .deb goes")
    parser.add_argument("--python", type=Path, default=DEFAULT_PYTHON, help="target interpreter")
    parser.add_argument("--compression", default="xz", help="xz (smallest) or gzip (faster)")
    args = parser.parse_args(argv)
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")  # reproducible builds' convention
    if epoch and not epoch.isdigit():
        parser.error(f"SOURCE_DATE_EPOCH must be seconds since 1970, not {epoch!r}")
    when = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    try:
        deb = build(
            version=args.version or f"{project_version()}-1",
            wheelhouse=args.wheelhouse,
            out_dir=args.out,
            when=when.replace(microsecond=0),
            python=args.python,
            compression=args.compression,
        )
    except BuildError as exc:
        print(f"build_deb: error: {exc}", file=sys.stderr)
        return 2
    print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
