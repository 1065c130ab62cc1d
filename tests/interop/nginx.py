"""Real nginx started from the templates in deploy/nginx/, unprivileged, inside a temp prefix.

The templates are rendered the way the nginx image renders /etc/nginx/templates: each ``${NAME}``
given is replaced, nothing else (nginx's own ``$variables`` stay). The snippets are copied as they
are. Only the process scaffolding (daemon off, pid, logs, temp paths) is written here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tests.interop.processes import accepts_connections, stop, tail, wait_until
from tests.support.ports import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "nginx"
_PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")

# The templates clear the x-credential-* namespace with headers-more; api-edge-cache.conf.template
# hashes its cache keys with set-misc, which needs ndk (./test.sh installs the three).
MODULES = "/usr/lib/nginx/modules"
MAIN_CONF = """\
load_module {modules}/ngx_http_headers_more_filter_module.so;
load_module {modules}/ndk_http_module.so;
load_module {modules}/ngx_http_set_misc_module.so;
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    include conf.d/api.conf;
}}
"""


def render(template: str, values: Mapping[str, str]) -> str:
    """Replace ``${NAME}`` for the given names; a placeholder left unfilled is an error."""
    rendered = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)
    left = _PLACEHOLDER.findall(rendered)
    assert not left, f"unfilled placeholders: {left}"
    return rendered


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    assert found, "nginx is required for the interop tests (./test.sh installs it)"
    return found


class Nginx:
    def __init__(self, template: str, values: Mapping[str, str]) -> None:
        self.port = free_port()
        # World-traversable: when the tests run as root, nginx's workers run as nobody.
        self.prefix = Path(tempfile.mkdtemp(prefix="sidecar-nginx-"))
        self.prefix.chmod(0o755)
        (self.prefix / "conf.d").mkdir()
        shutil.copytree(DEPLOY / "snippets", self.prefix / "snippets")
        conf = render((DEPLOY / template).read_text(), {**values, "API_LISTEN": f"127.0.0.1:{self.port}"})
        (self.prefix / "conf.d" / "api.conf").write_text(conf)
        (self.prefix / "nginx.conf").write_text(MAIN_CONF.format(prefix=self.prefix, modules=MODULES))
        self.log = self.prefix / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [nginx_binary(), "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"), "-e", str(self.log)]
        checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
        with (self.prefix / "stderr.log").open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=out)
        wait_until(lambda: accepts_connections(self.port), what="nginx", process=self.process, log=self.log)

    def error_log(self) -> str:
        return tail(self.log, 200)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None
        shutil.rmtree(self.prefix, ignore_errors=True)
