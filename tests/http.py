"""A real nginx serving a directory on 127.0.0.1, for tests that pull over HTTP.

Each server has its own configuration, pid file, logs and temporary paths in a
work directory, runs in the foreground as a child of the test process, and is
stopped when the context ends. Standard library only, no pytest: `bench/` and
`demo/` can use it too.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin") or "nginx"
START_TIMEOUT = 10.0

CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{
    worker_connections 64;
}}
http {{
    default_type application/octet-stream;
    access_log {work}/access.log;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        autoindex on;
        {limit_rate}
    }}
}}
"""


@contextlib.contextmanager
def serve_directory(
    directory: Path, work: Path | None = None, *, port: int | None = None, limit_rate: str | None = None
) -> Iterator[str]:
    """Serve `directory` over HTTP; yield the base URL (`http://127.0.0.1:PORT`, no slash).

    `work` holds nginx's own files; by default a temporary directory removed afterwards.
    `port` serves on that port (e.g. again after a stop) instead of a free one;
    `limit_rate` (nginx's, per connection, e.g. "512k") slows transfers down. The
    access log is `work/access.log`.
    """
    with contextlib.ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tether-nginx-")))
        work.mkdir(parents=True, exist_ok=True)
        # The port is chosen before nginx binds it, so another process may take it
        # first: try a few.
        chosen = port
        for attempt in range(3):
            port = chosen or _free_port()
            config = work / "nginx.conf"
            rate = f"limit_rate {limit_rate};" if limit_rate else ""
            config.write_text(CONFIG.format(work=work, port=port, root=directory.resolve(), limit_rate=rate))
            process = subprocess.Popen(
                [NGINX, "-p", str(work), "-e", str(work / "error.log"), "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(_stop, process)
            url = f"http://127.0.0.1:{port}"
            if _wait_until_up(process, url):
                yield url
                return
            if attempt == 2 or "Address already in use" not in _read(work / "error.log"):
                raise RuntimeError(f"nginx did not start on {url}:\n{_read(work / 'error.log')}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_up(process: subprocess.Popen[bytes], url: str) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url + "/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # it answers, even if the directory has no index
        except OSError:
            time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()  # a fast shutdown of the master and its worker
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
