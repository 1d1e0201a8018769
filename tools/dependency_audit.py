"""Audit the locks against known advisories, and check SECURITY.md keeps up with the findings.

    python -m tools.dependency_audit [--lock LOCK ...] [--advisories security/pypa-advisories.json]
                                     [--security SECURITY.md] [--online]

The locks are requirements.lock (the runtime set, in the images) and requirements-dev.lock (development)
unless --lock names others. Offline (the default) matches every `name==version` pin of the locks against a
snapshot of the PyPA advisory database (the OSV records pip-audit's PyPI source serves), kept in the repository so the
audit runs where PyPI's JSON API and osv.dev cannot be reached, and a lock bump is judged against the
same data. It prints one row per finding and exits 1 when a finding is not named in SECURITY.md's
"## Dependency audit" section (by its ID or one of its aliases), 0 otherwise, 2 when an input cannot be
read. `--online` runs `pip-audit -r LOCK ... --no-deps --disable-pip` instead where pip-audit is on PATH.

A snapshot is only as new as the day it was taken: rerun `--online` on a machine with network before
a release, and refresh the snapshot when the lock changes.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

DEFAULT_LOCKS = (Path("requirements.lock"), Path("requirements-dev.lock"))  # the runtime set, then development
DEFAULT_ADVISORIES = Path("security/pypa-advisories.json")
AUDIT_HEADING = "## Dependency audit"
# Range types whose bounds are package versions; GIT ranges name commits and cannot be compared.
VERSION_RANGE_TYPES = ("ECOSYSTEM", "SEMVER")
# A line of the lock: a name, "==", a version; markers after ";" and hashes/options are not ours to judge.
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*(?P<version>[^\s;#]+)")


class AuditInputError(Exception):
    """A lock, snapshot or SECURITY.md that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class Pin:
    name: str  # normalised (PEP 503)
    version: str
    line: int


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    advisory_id: str
    aliases: tuple[str, ...]
    fixed_in: tuple[str, ...]
    superseded_by: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return (self.advisory_id, *self.aliases)


def normalize_name(name: str) -> str:
    """PEP 503: case and runs of '-', '_', '.' do not distinguish projects."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str, source: str = "requirements.lock") -> list[Pin]:
    """The `name==version` pins of a lock file; comments and blank lines are skipped.

    Anything else (a range, a URL, an option) is refused: an audit of a version we cannot name is no audit.
    """
    pins: list[Pin] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.match(line)
        if match is None:
            raise AuditInputError(f"{source}:{number}: not a 'name==version' pin: {raw.strip()!r}")
        name = normalize_name(match["name"])
        if name in seen:
            raise AuditInputError(f"{source}:{number}: {name} is pinned twice (first on line {seen[name]})")
        seen[name] = number
        pins.append(Pin(name, match["version"], number))
    return pins


def read_lock(path: Path) -> list[Pin]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AuditInputError(f"{path}: cannot read the lock file ({exc.strerror})") from None
    return parse_lock(text, str(path))


def read_locks(paths: Sequence[Path]) -> list[Pin]:
    """The pins of several locks installed together; a project pinned in two of them is refused."""
    pins: list[Pin] = []
    where: dict[str, Path] = {}
    for path in paths:
        for pin in read_lock(path):
            if pin.name in where:
                raise AuditInputError(f"{path}:{pin.line}: {pin.name} is pinned in {where[pin.name]} too")
            where[pin.name] = path
            pins.append(pin)
    return pins


def read_snapshot(path: Path) -> dict:
    try:
        snapshot = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AuditInputError(f"{path}: cannot read the advisory snapshot ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise AuditInputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("packages"), dict):
        raise AuditInputError(f"{path}: no 'packages' object; not an advisory snapshot")
    return snapshot


def _parse_version(text: object) -> Version | None:
    try:
        return Version(str(text))
    except InvalidVersion:
        return None


def _events(rng: dict) -> list[tuple[str, str]]:
    """(kind, version) pairs of a range; old-schema records give flat introduced/fixed keys instead of events."""
    if "events" in rng:
        return [(kind, str(value)) for event in rng["events"] for kind, value in event.items()]
    events = [("introduced", str(rng.get("introduced", "0")))]
    events += [(kind, str(rng[kind])) for kind in ("fixed", "last_affected", "limit") if kind in rng]
    return events


def range_affects(rng: dict, version: Version) -> bool:
    """Whether an OSV version range covers `version`, in PEP 440 order.

    Affected from each `introduced` ("0": from the first release) up to, not including, the next `fixed`
    (or `limit`), or up to and including `last_affected`. Events are swept in version order because real
    records list pairs out of order (urllib3: 2.0.0-2.0.6 first, then 0-1.26.17).
    """
    if rng.get("type") not in VERSION_RANGE_TYPES:
        return False
    points: list[tuple[Version | None, str]] = []
    for kind, value in _events(rng):
        # "0" sorts before every release; an unparsable bound is dropped, which can only widen the range.
        point = None if (kind == "introduced" and value == "0") else _parse_version(value)
        if point is None and not (kind == "introduced" and value == "0"):
            continue
        points.append((point, kind))
    affected = False
    for point, kind in sorted(points, key=lambda item: (item[0] is not None, item[0] or Version("0"))):
        if kind == "introduced":
            affected = affected or point is None or version >= point
        elif kind in ("fixed", "limit") and version >= point:
            affected = False
        elif kind == "last_affected" and version > point:
            affected = False
    return affected


def entry_affects(entry: dict, version: Version) -> bool:
    """One `affected` entry: any of its ranges, or the explicit `versions` list."""
    if any(range_affects(rng, version) for rng in entry.get("ranges", [])):
        return True
    return any(_parse_version(listed) == version for listed in entry.get("versions", []))


def _fixed_after(entry: dict, version: Version) -> set[str]:
    fixed = set()
    for rng in entry.get("ranges", []):
        if rng.get("type") in VERSION_RANGE_TYPES:
            for kind, value in _events(rng):
                point = _parse_version(value)
                if kind == "fixed" and point is not None and point > version:
                    fixed.add(value)
    return fixed


def record_finding(record: dict, pin: Pin) -> Finding | None:
    """A finding when the record affects the pinned version of the pin's project, else None."""
    if record.get("withdrawn"):
        return None
    version = _parse_version(pin.version)
    if version is None:
        raise AuditInputError(f"line {pin.line}: {pin.name}=={pin.version} is not a PEP 440 version")
    # A record can sit in one package's folder and name another (vulns/pillow/PYSEC-0000-pillow: imagecodecs).
    entries = [
        entry
        for entry in record.get("affected", [])
        if normalize_name(entry.get("package", {}).get("name", "")) == pin.name
        and entry.get("package", {}).get("ecosystem", "PyPI") == "PyPI"
    ]
    hits = [entry for entry in entries if entry_affects(entry, version)]
    if not hits:
        return None
    fixed = set().union(*(_fixed_after(entry, version) for entry in hits))
    return Finding(
        package=pin.name,
        version=pin.version,
        advisory_id=record["id"],
        aliases=tuple(record.get("aliases", [])),
        fixed_in=tuple(sorted(fixed, key=Version)),
        superseded_by=tuple(record.get("superseded_by", [])),
    )


def audit(pins: Iterable[Pin], snapshot: dict) -> list[Finding]:
    """Every (pin, record) pair where the record covers the pinned version, drafts included."""
    findings = []
    for pin in pins:
        for record in snapshot["packages"].get(pin.name, []):
            finding = record_finding(record, pin)
            if finding is not None:
                findings.append(finding)
    return findings


def uncovered_packages(pins: Iterable[Pin], snapshot: dict) -> list[str]:
    """Pinned projects the snapshot says nothing about: neither records nor 'no folder in the database'."""
    known = set(snapshot["packages"]) | set(snapshot.get("lock_packages_without_folder", []))
    return [pin.name for pin in pins if pin.name not in known]


def audit_section(security_text: str) -> str:
    """SECURITY.md from the dependency-audit heading to the end (the whole file when there is no such heading)."""
    start = security_text.find(AUDIT_HEADING)
    return security_text if start < 0 else security_text[start:]


def is_documented(finding: Finding, text: str) -> bool:
    """Named by its ID or an alias, as a whole token (PYSEC-2023-22 is not PYSEC-2023-221)."""
    return any(re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) for name in finding.names)


def format_table(findings: Sequence[Finding], text: str) -> str:
    header = ("package", "version", "advisory", "aliases", "fixed in", "in SECURITY.md")
    rows = [
        (
            f.package,
            f.version,
            f.advisory_id,
            ", ".join(f.aliases) or "-",
            ", ".join(f.fixed_in) or "none",
            "yes" if is_documented(f, text) else "NO",
        )
        for f in findings
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def run_offline(locks: Sequence[Path], advisories: Path, security: Path) -> int:
    pins = read_locks(locks)
    snapshot = read_snapshot(advisories)
    try:
        text = audit_section(security.read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"{security}: cannot read ({exc.strerror}); no finding counts as documented", file=sys.stderr)
        text = ""
    findings = audit(pins, snapshot)
    counted = [f for f in findings if not f.superseded_by]
    drafts = [f for f in findings if f.superseded_by]
    source = snapshot.get("source", {})
    print(
        f"{' + '.join(map(str, locks))}: {len(pins)} pins audited against {advisories} "
        f"({source.get('repository', '?')}, read {source.get('read_on', '?')})"
    )
    if counted:
        print(format_table(counted, text))
    else:
        print("no advisory in the snapshot covers a pinned version")
    for f in drafts:
        print(
            f"note: draft {f.advisory_id} ({f.package} {f.version}) is superseded by "
            f"{', '.join(f.superseded_by)}, which is what counts"
        )
    missing = uncovered_packages(pins, snapshot)
    if missing:
        print(f"warning: the snapshot has no entry for {', '.join(missing)}: refresh it for this lock")
    undocumented = [f for f in counted if not is_documented(f, text)]
    if undocumented:
        names = ", ".join(f"{f.package} {f.version}: {f.advisory_id}" for f in undocumented)
        print(f"FAIL: not in {security} ({AUDIT_HEADING} ...): {names}")
        return 1
    return 0


def run_pip_audit(locks: Sequence[Path]) -> int | None:
    """pip-audit's exit status, or None when it is not installed (the caller falls back to offline)."""
    exe = shutil.which("pip-audit")
    if exe is None:
        print(
            "pip-audit is not on PATH (it is not part of the lock; install it in a throwaway venv), "
            "so the offline audit runs instead"
        )
        return None
    requirements = [arg for lock in locks for arg in ("-r", str(lock))]
    proc = subprocess.run([exe, *requirements, "--no-deps", "--disable-pip"], capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    # Without PyPI's JSON API, pip-audit skips every package and still says "No known vulnerabilities".
    if "could not be audited" in proc.stdout + proc.stderr:
        print("FAIL: pip-audit skipped packages (advisory source unreachable?); that is not a clean audit")
        return max(proc.returncode, 1)
    return proc.returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dependency_audit", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--lock", type=Path, action="append", help="a lock file, repeatable (default: both of the project's)"
    )
    parser.add_argument("--advisories", type=Path, default=DEFAULT_ADVISORIES)
    parser.add_argument("--security", type=Path, default=None, help="default: SECURITY.md next to the lock")
    parser.add_argument("--online", action="store_true", help="run pip-audit where it is installed")
    args = parser.parse_args(argv)
    locks = args.lock or list(DEFAULT_LOCKS)
    security = args.security or locks[0].parent / "SECURITY.md"
    try:
        if args.online:
            status = run_pip_audit(locks)
            if status is not None:
                return status
        return run_offline(locks, args.advisories, security)
    except AuditInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
