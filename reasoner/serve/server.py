"""Run the app: in the foreground (``reasoner serve``) or in a background thread on a free port (tests, the
online loop).

>>> # handle = run_in_thread(create_app(service)); handle.url -> 'http://127.0.0.1:PORT'; handle.stop()
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import uvicorn


@dataclass
class ServerHandle:
    url: str
    host: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout: float = 30.0) -> None:
        """Finish requests in flight, then stop (uvicorn's graceful shutdown)."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError(f"server at {self.url} did not stop within {timeout} s")

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port}: {e} (pick another serve.port, or 0 for a free one)"
        ) from e
    sock.listen(2048)
    return sock


def run_in_thread(
    app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", timeout: float = 60.0
) -> ServerHandle:
    """Serve ``app`` from a daemon thread; ``port=0`` picks a free port. Returns once the server accepts."""
    sock = bind(host, port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
    server.install_signal_handlers = lambda: None  # signals belong to the main thread's program
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"serve:{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"server on {host}:{port} exited while starting (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"server on {host}:{port} did not start within {timeout} s")
        time.sleep(0.02)
    shown = f"[{host}]" if ":" in host else host
    return ServerHandle(f"http://{shown}:{port}", host, port, server, thread)


def serve(cfg, model_path: str | None = None) -> None:
    """``reasoner serve``: load the policy, open the store, serve until interrupted."""
    import json
    import sys

    from reasoner.serve.app import create_app
    from reasoner.serve.service import ServeService

    if cfg.host not in ("127.0.0.1", "localhost", "::1") and cfg.api_key is None:
        print(
            f"reasoner serve: warning: listening on {cfg.host} without an API key: anyone who can reach this "
            "port can generate and post feedback (give --api-key KEY)",
            file=sys.stderr,
        )
    svc = ServeService.from_config(cfg, model_path)
    sock = bind(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    print(
        json.dumps(
            {
                "serving": svc.policy.name,
                "model": svc.cfg.model_name,
                "url": f"http://{cfg.host}:{port}",
                "db": svc.store.url,
            }
        ),
        flush=True,
    )
    server = uvicorn.Server(uvicorn.Config(create_app(svc), log_level="info", lifespan="on"))
    server.run(sockets=[sock])
