"""The nginx front's configuration, the readiness flag and the worker count, without starting a server."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from gluonseg.errors import ClientError
from serve import proxy
from serve.capacity import MB, RESERVED_MB, default_workers, memory_available_bytes, worker_peak_mb
from serve.entry import settings_with
from serve.readiness import Readiness
from serve.settings import ServerSettings

REPO = Path(__file__).resolve().parents[2]


def settings(tmp_path: Path, **changes) -> ServerSettings:
    return replace(ServerSettings(model_dir=tmp_path, workers=2, port=8123), **changes)


def test_rendered_config_passes_nginx_t_and_carries_every_setting(tmp_path):
    s = settings(
        tmp_path,
        max_payload_mb=7,
        timeout_s=42,
        max_queue=3,
        client_header_timeout_s=11,
        client_body_timeout_s=12,
        send_timeout_s=13,
        keepalive_timeout_s=14,
        drain_timeout_s=15,
    )
    runtime = proxy.runtime_dir(replace(s, runtime_dir=tmp_path / "rt"))
    config = proxy.render(s, runtime, "127.0.0.1")
    proxy.check_config(proxy.find_nginx(), config)  # nginx -t: raises with nginx's words if wrong
    text = config.read_text()
    for line in (
        "listen 127.0.0.1:8123",
        "client_max_body_size 7340032;",
        "client_header_timeout 11s;",
        "client_body_timeout 12s;",
        "send_timeout 13s;",
        "keepalive_timeout 14s;",
        "worker_shutdown_timeout 15s;",
        "proxy_read_timeout 42s;",
        f"server unix:{runtime}/gunicorn.sock max_conns=5 max_fails=0;",  # 2 workers + 3 waiting
        "server_tokens off;",
    ):
        assert line in text, line
    assert "${" not in text  # every field filled


def test_error_pages_are_json_naming_the_setting(tmp_path):
    s = settings(tmp_path, max_payload_mb=9, timeout_s=33)
    runtime = proxy.runtime_dir(replace(s, runtime_dir=tmp_path / "rt"))
    proxy.render(s, runtime, "127.0.0.1")
    pages = {int(p.stem): json.loads(p.read_text())["error"] for p in (runtime / "_errors").glob("*.json")}
    assert set(pages) >= {400, 408, 413, 414, 431, 504}
    assert "9 MB" in pages[413] and "SAGEMAKER_MAX_PAYLOAD_IN_MB" in pages[413]
    assert "33 s" in pages[504] and "SAGEMAKER_MODEL_SERVER_TIMEOUT" in pages[504]
    assert "GLUONSEG_CLIENT_BODY_TIMEOUT" in pages[408]


def test_default_queue_is_four_per_worker_and_zero_is_allowed(tmp_path):
    assert settings(tmp_path).queue_limit == 8
    assert settings(tmp_path, max_queue=0).queue_limit == 0


def test_queue_and_timeouts_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "3")
    monkeypatch.setenv("GLUONSEG_MAX_QUEUE", "5")
    monkeypatch.setenv("GLUONSEG_CLIENT_BODY_TIMEOUT", "4")
    monkeypatch.setenv("GLUONSEG_NO_PROXY", "true")
    monkeypatch.setenv("GLUONSEG_RUNTIME_DIR", str(tmp_path))
    s = ServerSettings.from_env()
    assert (s.workers, s.queue_limit, s.client_body_timeout_s, s.proxy, s.runtime_dir) == (3, 5, 4, False, tmp_path)
    monkeypatch.setenv("GLUONSEG_NO_PROXY", "maybe")
    with pytest.raises(ClientError, match="GLUONSEG_NO_PROXY must be true or false"):
        ServerSettings.from_env()
    monkeypatch.setenv("GLUONSEG_NO_PROXY", "0")
    monkeypatch.setenv("GLUONSEG_CLIENT_BODY_TIMEOUT", "0")
    with pytest.raises(ClientError, match="GLUONSEG_CLIENT_BODY_TIMEOUT must be at least 1"):
        ServerSettings.from_env()


def test_readiness_flag_follows_the_loaded_workers(tmp_path):
    ready = Readiness(tmp_path)
    assert not ready.is_ready()
    ready.mark_ready(101)
    ready.mark_ready(102)
    assert ready.is_ready() and ready.ready_pids() == [101, 102]
    ready.forget(101)
    assert ready.is_ready()  # 102 still serves
    ready.forget(102)
    assert not ready.is_ready()
    ready.mark_ready(103)
    ready.clear()
    assert not ready.is_ready() and ready.ready_pids() == []


def _fake_root(tmp_path: Path, limit: str, usage: int, mem_available_kb: int) -> Path:
    cgroup = tmp_path / "sys/fs/cgroup"
    cgroup.mkdir(parents=True)
    (cgroup / "memory.max").write_text(limit + "\n")
    (cgroup / "memory.current").write_text(f"{usage}\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {mem_available_kb} kB\n")
    return tmp_path


def test_available_memory_is_the_smaller_of_cgroup_headroom_and_memavailable(tmp_path):
    root = _fake_root(tmp_path / "a", str(4096 * MB), 1024 * MB, 16 * 1024 * 1024)
    assert memory_available_bytes(root) == 3072 * MB  # the container's limit binds
    root = _fake_root(tmp_path / "b", "max", 0, 2 * 1024 * 1024)
    assert memory_available_bytes(root) == 2048 * MB  # no limit: the machine's MemAvailable


def _model(tmp_path: Path, algorithm: str, backbone: str) -> Path:
    folder = tmp_path / f"{algorithm}-{backbone}"
    folder.mkdir()
    (folder / "hyperparams.json").write_text(json.dumps({"algorithm": algorithm, "backbone": backbone}))
    return folder


def test_worker_count_never_exceeds_what_the_memory_holds(tmp_path):
    fcn = _model(tmp_path, "fcn", "resnet-50")
    peak, _ = worker_peak_mb(fcn, 1 << 20)
    plenty = (RESERVED_MB + 16 * peak) * MB
    assert default_workers(8, fcn, 1 << 20, available_bytes=plenty)[0] == 8  # cores bind
    workers, note = default_workers(8, fcn, 1 << 20, available_bytes=(RESERVED_MB + 3 * peak + 1) * MB)
    assert workers == 3 and "what the memory holds" in note and f"{peak} MB" in note
    workers, note = default_workers(8, fcn, 1 << 20, available_bytes=100 * MB)
    assert workers == 1 and "WARNING" in note
    # A given per-worker figure replaces the estimate.
    assert default_workers(8, fcn, 1 << 20, peak_mb=1000, available_bytes=(RESERVED_MB + 2500) * MB)[0] == 2


def test_bigger_models_and_canvases_are_estimated_larger(tmp_path):
    fcn50, _ = worker_peak_mb(_model(tmp_path, "fcn", "resnet-50"), 1 << 20)
    fcn101, _ = worker_peak_mb(_model(tmp_path, "fcn", "resnet-101"), 1 << 20)
    deeplab, _ = worker_peak_mb(_model(tmp_path, "deeplab", "resnet-50"), 1 << 20)
    fcn50_big, _ = worker_peak_mb(tmp_path / "fcn-resnet-50", 4 << 20)
    unknown, text = worker_peak_mb(tmp_path / "missing", 1 << 20)
    assert fcn101 > fcn50 and deeplab > fcn50 and fcn50_big > fcn50
    assert unknown >= max(fcn101, deeplab) and "resnet-101" in text  # unknown model: assume the largest


def test_cli_model_dir_resizes_the_default_worker_count(tmp_path, monkeypatch):
    monkeypatch.delenv("SAGEMAKER_MODEL_SERVER_WORKERS", raising=False)
    monkeypatch.delenv("MODEL_SERVER_WORKERS", raising=False)
    base = ServerSettings.from_env()
    chosen = settings_with(base, model_dir=_model(tmp_path, "fcn", "resnet-50"))
    assert "fcn/resnet-50" in chosen.workers_note and not chosen.workers_asked
    asked = settings_with(base, model_dir=tmp_path, workers=1)
    assert asked.workers == 1 and asked.workers_asked


def test_makefile_installs_nginx_and_both_images_carry_it():
    makefile = (REPO / "Makefile").read_text()
    assert "install: $(STAMP) nginx" in makefile and "apt-get install -y -qq nginx" in makefile
    for name in ("Dockerfile.serve", "Dockerfile.train"):
        assert " nginx" in (REPO / name).read_text(), name


def test_missing_nginx_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(proxy.shutil, "which", lambda name: None)
    monkeypatch.setattr(proxy.os, "access", lambda path, mode: False)
    with pytest.raises(ClientError, match="nginx is not installed.*apt-get install -y nginx"):
        proxy.find_nginx()


def test_serve_help_offers_no_proxy():
    out = subprocess.run(
        [str(Path(sys.executable).parent / "gluonseg"), "serve", "--help"], capture_output=True, text=True
    ).stdout
    assert "--no-proxy" in out
