"""tools.dependency_audit: OSV range logic, lock parsing, and the audit of the real lock against SECURITY.md."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from tools import dependency_audit as da

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
BOTH = ["--lock", str(LOCK), "--lock", str(DEV_LOCK)]
SNAPSHOT = ROOT / "security" / "pypa-advisories.json"
SECURITY = ROOT / "SECURITY.md"


def ecosystem(*events: dict) -> dict:
    return {"type": "ECOSYSTEM", "events": list(events)}


def affects(rng: dict, version: str) -> bool:
    return da.range_affects(rng, Version(version))


# --- (a) range logic on hand-written OSV records -------------------------------------------------


@pytest.mark.parametrize(
    ("version", "expected"),
    [("1.9", False), ("2.0", True), ("2.4.9", True), ("2.5", False), ("3.0", False)],
)
def test_introduced_up_to_fixed_exclusive(version, expected):
    assert affects(ecosystem({"introduced": "2.0"}, {"fixed": "2.5"}), version) is expected


@pytest.mark.parametrize(("version", "expected"), [("0.0.1", True), ("0.9", True), ("1.0", False)])
def test_introduced_zero_means_from_the_first_release(version, expected):
    assert affects(ecosystem({"introduced": "0"}, {"fixed": "1.0"}), version) is expected


@pytest.mark.parametrize(("version", "expected"), [("1.0", False), ("1.1", True), ("1.4", True), ("1.4.1", False)])
def test_last_affected_is_inclusive(version, expected):
    assert affects(ecosystem({"introduced": "1.1"}, {"last_affected": "1.4"}), version) is expected


def test_introduced_without_an_end_is_open():
    rng = ecosystem({"introduced": "0"})
    assert affects(rng, "0.1") and affects(rng, "99.0")


@pytest.mark.parametrize(
    ("version", "expected"),
    # Pairs written out of order, as urllib3's records give them: 0-1.26.17 and 2.0.0-2.0.6.
    [
        ("1.26.16", True),
        ("1.26.17", False),
        ("1.27", False),
        ("2.0.0", True),
        ("2.0.5", True),
        ("2.0.6", False),
        ("2.8.0", False),
    ],
)
def test_several_pairs_in_one_range_in_any_order(version, expected):
    rng = ecosystem({"introduced": "2.0.0"}, {"fixed": "2.0.6"}, {"introduced": "0"}, {"fixed": "1.26.17"})
    assert affects(rng, version) is expected


@pytest.mark.parametrize(
    ("version", "expected"),
    # PEP 440: 1.0rc1 and 1.0.dev0 come before 1.0, 1.0.post1 after it.
    [("1.0rc1", True), ("1.0.dev0", True), ("1.0", False), ("1.0.post1", False), ("0.9rc1", False)],
)
def test_pre_releases_sort_before_the_release(version, expected):
    assert affects(ecosystem({"introduced": "0.9"}, {"fixed": "1.0"}), version) is expected


def test_an_rc_can_be_the_introduced_bound():
    rng = ecosystem({"introduced": "2.0.0rc1"}, {"fixed": "2.0.1"})
    assert affects(rng, "2.0.0rc1") and affects(rng, "2.0.0")
    assert not affects(rng, "2.0.0b3")


def test_versions_are_compared_as_pep440_not_as_text():
    # As text "1.10" < "1.9"; as versions 1.10 is the later release.
    assert not affects(ecosystem({"introduced": "0"}, {"fixed": "1.10"}), "1.10.1")
    assert affects(ecosystem({"introduced": "0"}, {"fixed": "1.10"}), "1.9.9")


def test_legacy_flat_ranges():
    assert affects({"type": "ECOSYSTEM", "fixed": "0.12.3"}, "0.12.2")
    assert not affects({"type": "ECOSYSTEM", "fixed": "0.12.3"}, "0.12.3")
    rng = {"type": "ECOSYSTEM", "introduced": "5.1", "fixed": "5.2b1"}
    assert affects(rng, "5.1.2") and not affects(rng, "5.0") and not affects(rng, "5.2")


def test_git_ranges_never_match_versions():
    assert not affects({"type": "GIT", "events": [{"introduced": "0"}, {"fixed": "abc123"}]}, "1.0")


def test_explicit_versions_list_counts_even_outside_the_ranges():
    entry = {
        "package": {"name": "demo", "ecosystem": "PyPI"},
        "ranges": [ecosystem({"introduced": "2.0"}, {"fixed": "2.1"})],
        "versions": ["1.5", "3.1.0.rc1"],
    }
    assert da.entry_affects(entry, Version("1.5"))
    assert da.entry_affects(entry, Version("3.1.0rc1"))  # the same version spelt differently
    assert da.entry_affects(entry, Version("2.0.3"))
    assert not da.entry_affects(entry, Version("1.6"))
    assert not da.entry_affects(entry, Version("2.1"))


def _record(rid: str, package: str, *ranges: dict, **extra) -> dict:
    return {
        "id": rid,
        "aliases": [f"CVE-0000-{rid[-1]}"],
        "affected": [{"package": {"name": package, "ecosystem": "PyPI"}, "ranges": list(ranges)}],
        **extra,
    }


def test_audit_reports_only_records_that_cover_the_pin_with_the_next_fixes():
    snapshot = {
        "packages": {
            "demo-pkg": [
                _record("X-1", "Demo_Pkg", ecosystem({"introduced": "0"}, {"fixed": "1.5"})),
                _record(
                    "X-2",
                    "demo-pkg",
                    ecosystem({"introduced": "0"}, {"fixed": "1.2"}, {"introduced": "2.0"}, {"fixed": "2.1"}),
                ),
                _record("X-3", "demo-pkg", ecosystem({"introduced": "1.4"}, {"fixed": "1.4.2"})),
                _record(
                    "X-4", "other-pkg", ecosystem({"introduced": "0"})
                ),  # filed under demo-pkg, names another project
                _record("X-5", "demo-pkg", ecosystem({"introduced": "0"}), withdrawn="2024-01-01T00:00:00Z"),
            ]
        }
    }
    findings = da.audit([da.Pin("demo-pkg", "1.4.1", 1)], snapshot)
    assert [f.advisory_id for f in findings] == ["X-1", "X-3"]
    assert findings[0].fixed_in == ("1.5",) and findings[1].fixed_in == ("1.4.2",)
    assert da.audit([da.Pin("demo-pkg", "1.4.2", 1)], snapshot)[0].advisory_id == "X-1"
    assert da.audit([da.Pin("demo-pkg", "3.0", 1)], snapshot) == []


def test_documented_means_the_id_or_an_alias_as_a_whole_token():
    finding = da.Finding("p", "1.0", "PYSEC-2023-22", ("CVE-2023-1",), ())
    assert da.is_documented(finding, "| p | PYSEC-2023-22 |")
    assert da.is_documented(finding, "see CVE-2023-1.")
    assert not da.is_documented(finding, "PYSEC-2023-221 and CVE-2023-12")
    assert not da.is_documented(finding, "")


def test_audit_section_starts_at_the_heading():
    text = "# Security\nCVE-1\n## Dependency audit (`requirements.lock`)\nCVE-2\n"
    assert da.audit_section(text).startswith("## Dependency audit") and "CVE-1" not in da.audit_section(text)
    assert da.audit_section("no heading CVE-1") == "no heading CVE-1"


# --- (b) lock parsing ----------------------------------------------------------------------------


def test_parse_lock_skips_comments_and_blank_lines_and_normalises_names():
    text = "# header\n\nFlask==3.0.3\n  typing_extensions==4.16.0  # inline\nZope.Interface==6.0\nPyYAML == 6.0.3\n"
    pins = da.parse_lock(text)
    assert [(p.name, p.version, p.line) for p in pins] == [
        ("flask", "3.0.3", 3),
        ("typing-extensions", "4.16.0", 4),
        ("zope-interface", "6.0", 5),
        ("pyyaml", "6.0.3", 6),
    ]


def test_parse_lock_keeps_the_version_before_a_marker():
    assert da.parse_lock("numpy==1.23.5; python_version < '3.12'")[0].version == "1.23.5"


@pytest.mark.parametrize("line", ["numpy>=1.23", "numpy", "-e .", "git+https://x/y.git"])
def test_parse_lock_refuses_what_is_not_a_pin(line):
    with pytest.raises(da.AuditInputError, match=r"my\.lock:2: not a 'name==version' pin"):
        da.parse_lock(f"ok==1.0\n{line}\n", "my.lock")


def test_parse_lock_refuses_the_same_project_twice_after_normalisation():
    with pytest.raises(da.AuditInputError, match="typing-extensions is pinned twice"):
        da.parse_lock("typing_extensions==4.0\nTyping-Extensions==4.1\n")


def test_real_locks_parse_to_unique_pins_split_into_runtime_and_development():
    pins = da.read_locks([LOCK, DEV_LOCK])
    assert len(pins) == len({p.name for p in pins}) == 68
    runtime = {p.name for p in da.read_lock(LOCK)}
    assert {"pillow", "mxnet", "typing-extensions", "pyyaml", "onnxruntime", "openvino"} <= runtime
    assert not {"pytest", "ruff", "hypothesis", "grpcio-tools", "botocore"} & runtime


def test_a_project_pinned_in_two_locks_is_refused(tmp_path):
    first, second = tmp_path / "a.lock", tmp_path / "b.lock"
    first.write_text("numpy==1.23.5\n")
    second.write_text("ruff==0.6.9\nNumPy==1.24.0\n")
    with pytest.raises(da.AuditInputError, match=rf"b\.lock:2: numpy is pinned in {re.escape(str(first))} too"):
        da.read_locks([first, second])


# --- (c) the real lock against the real snapshot and SECURITY.md ---------------------------------


def test_snapshot_covers_every_pinned_project():
    snapshot = da.read_snapshot(SNAPSHOT)
    assert da.uncovered_packages(da.read_locks([LOCK, DEV_LOCK]), snapshot) == []
    assert not set(snapshot["packages"]) & set(snapshot["lock_packages_without_folder"])
    for name, records in snapshot["packages"].items():
        assert records, name
        for record in records:
            assert record["id"] and record["commit"] and record["affected"], record["id"]


def test_every_finding_for_the_pinned_versions_is_in_security_md():
    findings = da.audit(da.read_locks([LOCK, DEV_LOCK]), da.read_snapshot(SNAPSHOT))
    text = da.audit_section(SECURITY.read_text(encoding="utf-8"))
    missing = [
        f"{f.package} {f.version}: {f.advisory_id} {f.aliases}"
        for f in findings
        if not f.superseded_by and not da.is_documented(f, text)
    ]
    assert missing == [], "SECURITY.md's dependency audit does not mention: " + "; ".join(missing)


def test_the_command_passes_on_the_real_locks(capsys):
    assert da.main([*BOTH, "--advisories", str(SNAPSHOT)]) == 0
    out = capsys.readouterr().out
    assert "68 pins audited" in out and "FAIL" not in out


# --- (d) a changed lock fails and names the new advisory -----------------------------------------


def test_an_old_pillow_in_the_lock_fails_and_names_the_advisory(tmp_path):
    # pillow < 9.0.1: PYSEC-2022-168 (CVE-2022-24303) in the snapshot; SECURITY.md has no reason to name it.
    assert "PYSEC-2022-168" not in SECURITY.read_text(encoding="utf-8")
    lock = tmp_path / "requirements.lock"
    lock.write_text(LOCK.read_text(encoding="utf-8").replace("pillow==10.4.0", "pillow==9.0.0"), encoding="utf-8")
    assert "pillow==9.0.0" in lock.read_text(encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.dependency_audit",
            "--lock",
            str(lock),
            "--advisories",
            str(SNAPSHOT),
            "--security",
            str(SECURITY),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fail_line = next(line for line in proc.stdout.splitlines() if line.startswith("FAIL"))
    assert "pillow 9.0.0: PYSEC-2022-168" in fail_line
    assert "setuptools" not in fail_line  # the documented finding still counts as documented


def test_without_a_security_file_every_finding_fails(tmp_path, capsys):
    assert da.main(["--lock", str(LOCK), "--advisories", str(SNAPSHOT), "--security", str(tmp_path / "no.md")]) == 1
    assert "setuptools 65.5.0: PYSEC-2022-43012" in capsys.readouterr().out


def test_unreadable_inputs_exit_2_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    assert da.main(["--lock", str(LOCK), "--advisories", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert da.main(["--lock", str(tmp_path / "none.lock"), "--advisories", str(SNAPSHOT)]) == 2


# --- --online --------------------------------------------------------------------------------------


def test_online_without_pip_audit_says_so_and_falls_back(monkeypatch, capsys):
    monkeypatch.setattr(da.shutil, "which", lambda name: None)
    assert da.main(["--online", *BOTH, "--advisories", str(SNAPSHOT)]) == 0
    out = capsys.readouterr().out
    assert "pip-audit is not on PATH" in out and "68 pins audited" in out


def _fake_pip_audit(tmp_path: Path, output: str, status: int) -> None:
    exe = tmp_path / "pip-audit"
    exe.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'args'}\necho '{output}'\nexit {status}\n")
    exe.chmod(0o755)


def test_online_runs_pip_audit_on_the_lock(tmp_path, monkeypatch, capsys):
    _fake_pip_audit(tmp_path, "No known vulnerabilities found", 0)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert da.main(["--online", "--lock", str(LOCK)]) == 0
    assert (tmp_path / "args").read_text().split() == ["-r", str(LOCK), "--no-deps", "--disable-pip"]
    assert "No known vulnerabilities found" in capsys.readouterr().out


def test_online_run_that_skipped_packages_is_not_a_pass(tmp_path, monkeypatch, capsys):
    _fake_pip_audit(tmp_path, "numpy  Dependency not found on PyPI and could not be audited", 0)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert da.main(["--online", "--lock", str(LOCK)]) == 1
    assert "skipped packages" in capsys.readouterr().out


def test_snapshot_is_valid_json_with_its_source():
    source = json.loads(SNAPSHOT.read_text(encoding="utf-8"))["source"]
    assert source["repository"] == "pypa/advisory-database" and source["read_on"] == "2026-11-24"
    assert all(len(commit) == 40 for commit in source["commits"])
