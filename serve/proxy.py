"""The nginx front: render serve/nginx.conf.template into a runtime folder, and find the nginx binary.

The runtime folder holds everything the two processes share: nginx.conf, the JSON error pages nginx
answers with, gunicorn's unix socket, the readiness flag (serve/readiness.py), nginx's temp folders.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from string import Template

from gluonseg.errors import ClientError
from serve.readiness import Readiness
from serve.settings import ServerSettings

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
SOCKET_NAME = "gunicorn.sock"
INSTALL_HINT = "install it with: apt-get install -y nginx (or run `make install` as root)"
RETRY_AFTER_S = 1
MAX_RESPONSE_BYTES = "1024m"  # answers are buffered to disk past 1 MB; probabilities of a 1 MP picture ~ 100 MB

# nginx's own errors, with the same {"error": ...} body as the app's. 431 is nginx's 494; 501 (a transfer
# coding nginx does not know) is answered as the client's mistake it is, a 400.
ERROR_PAGES = {
    400: "bad request: the request line or headers could not be parsed",
    404: "not found: the server answers GET /ping, POST /invocations and GET /execution-parameters",
    405: "method not allowed",
    408: "request timeout: the client sent its request too slowly "
    "(GLUONSEG_CLIENT_HEADER_TIMEOUT / GLUONSEG_CLIENT_BODY_TIMEOUT)",
    413: "request body over the limit of {payload_mb} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)",
    414: "request URI too long",
    431: "request header fields too large",
    500: "internal error in the front server",
    501: "unsupported request framing (Transfer-Encoding other than chunked)",
    504: "the request did not finish within {timeout} s (SAGEMAKER_MODEL_SERVER_TIMEOUT)",
}


def runtime_dir(settings: ServerSettings) -> Path:
    """The runtime folder: GLUONSEG_RUNTIME_DIR if set, else a new private temp folder."""
    if settings.runtime_dir is not None:
        folder = Path(settings.runtime_dir)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="gluonseg-serve-"))
    folder.chmod(0o755)  # nothing secret here; the socket is for nginx's workers
    return folder


def socket_path(runtime: Path) -> Path:
    return runtime / SOCKET_NAME


def find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ClientError(f"nginx is not installed (it fronts the gunicorn workers); {INSTALL_HINT}")


def _user_line() -> str:
    """nginx's workers run as the user that starts `serve`.

    Not root's default (`nobody`): the workers must reach the socket, the readiness flag and the error
    pages, and a runtime folder under a private tree (pytest's, a user's 0700 home) is closed to
    `nobody`. The serving image runs as an unprivileged user, so there the workers are unprivileged too.
    """
    if os.geteuid() != 0:
        return ""  # nginx keeps the current user (a `user` line would only draw a warning)
    return f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};"


def _json(message: str) -> str:
    # nginx's `return CODE 'text'`: single quotes delimit; JSON never needs one unescaped.
    return json.dumps({"error": message}).replace("'", "\\u0027") + "\n"


def render(settings: ServerSettings, runtime: Path, host: str, access_log: bool = True) -> Path:
    """Write runtime/nginx.conf and runtime/_errors/*.json; returns the config's path."""
    errors = runtime / "_errors"
    errors.mkdir(parents=True, exist_ok=True)
    for code, text in ERROR_PAGES.items():
        message = text.format(payload_mb=settings.max_payload_mb, timeout=settings.timeout_s)
        (errors / f"{code}.json").write_text(_json(f"{code} {message}"))
    listen = f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"
    values = {
        "user_line": _user_line(),
        "runtime": str(runtime),
        "error_log_level": "warn",
        "drain_timeout": settings.drain_timeout_s,
        "access_log": "/dev/stdout gluonseg" if access_log else "off",
        "client_header_timeout": settings.client_header_timeout_s,
        "client_body_timeout": settings.client_body_timeout_s,
        "send_timeout": settings.send_timeout_s,
        "keepalive_timeout": settings.keepalive_timeout_s,
        "max_body_bytes": settings.max_payload_bytes,
        "socket": str(socket_path(runtime)),
        "max_conns": settings.workers + settings.queue_limit,
        "listen": listen,
        "backlog": 1024,
        "retry_after": RETRY_AFTER_S,
        "busy_json": _json(
            f"503 the server is busy: {settings.workers} request(s) running and {settings.queue_limit} waiting "
            f"(GLUONSEG_MAX_QUEUE); retry after {RETRY_AFTER_S} s"
        ),
        "down_json": _json("502 no worker answered (the model server is restarting or failed; see its log)"),
        "not_loaded_json": _json("model not loaded"),
        "ready_flag": str(Readiness(runtime).flag),
        "request_timeout": settings.timeout_s,
        "max_response_bytes": MAX_RESPONSE_BYTES,
    }
    config = runtime / "nginx.conf"
    config.write_text(Template(TEMPLATE.read_text()).substitute(values))
    return config


def nginx_command(nginx: str, config: Path) -> list[str]:
    # -e stderr: nginx would otherwise open its compiled-in error log (/var/log/nginx) before reading
    # the config, which fails for a non-root user.
    return [nginx, "-e", "stderr", "-p", str(config.parent), "-c", str(config)]


def check_config(nginx: str, config: Path) -> None:
    """`nginx -t`: a bad setting fails here, with nginx's own words, before anything starts."""
    proc = subprocess.run(nginx_command(nginx, config) + ["-t", "-q"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ClientError(f"nginx refused its configuration {config}: {proc.stderr.strip()}")
