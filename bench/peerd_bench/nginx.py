"""nginx serving a directory with sendfile: the baseline every ratio is stated against."""

import os

from .common import connects, free_port, wait_until
from .cpu import children
from .procs import CLEAN


class Nginx:
    def __init__(self, work, root):
        self.dir = os.path.join(work, "nginx")
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        self.root = root
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        d = self.dir
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""daemon off;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{ listen {self.addr}; root {self.root}; }}
}}
""")
        self.proc = CLEAN.spawn(["nginx", "-c", conf, "-p", d], os.path.join(d, "nginx.log"))
        wait_until("nginx listening", 15, lambda: connects(self.addr))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def pids(self):
        """The master and its workers."""
        return [self.proc.pid] + children(self.proc.pid)

    def stop(self):
        CLEAN.stop(self.proc)
