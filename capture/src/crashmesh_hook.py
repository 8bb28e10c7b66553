"""crashmesh: report uncaught Python exceptions to the crashmesh node.

Installed by `crashmesh install` (a .pth file imports it at interpreter start) and removed
by `crashmesh uninstall`. It never changes the program's output or exit status: the
previous excepthook runs first, exactly as before, and every failure here is swallowed.
KeyboardInterrupt, SystemExit and broken pipes are not problems and are not reported.
"""
import sys

_SOCKET = "@SOCKET@"
_SPOOL = "@SPOOL@"
_TIMEOUT_SECS = 2.0
_TRACEBACK_BYTES_MAX = 1024 * 1024


def _message(exc_type, exc, tb):
    import os
    import time
    import traceback

    text = "".join(traceback.format_exception(exc_type, exc, tb))
    if len(text) > _TRACEBACK_BYTES_MAX:
        text = text[-_TRACEBACK_BYTES_MAX:]
    module = getattr(exc_type, "__module__", "builtins")
    name = getattr(exc_type, "__qualname__", exc_type.__name__)
    return {
        "format_version": 1,
        "time_ms": int(time.time() * 1000),
        # The daemon takes who sent this from the kernel; pid and uid are for the spool
        # entry written when the daemon is down (by root only).
        "pid": os.getpid(),
        "uid": os.getuid(),
        "executable": sys.executable,
        "argv": list(sys.argv),
        "exception_type": name if module in ("builtins", "__main__") else module + "." + name,
        "message": str(exc)[:4096],
        "traceback": text,
    }


def _send(message):
    import json
    import socket

    data = json.dumps(message).encode("utf-8") + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(_TIMEOUT_SECS)
        connection.connect(_SOCKET)
        connection.sendall(data)
        # The daemon answers once it has snapshotted /proc of this still-living process.
        return connection.recv(64).startswith(b"ok")


def _write_spool(message):
    """The daemon is down: leave a complete spool entry, as the core hook does. Only
    root can: the spool is root's alone, and the daemon believes what the kernel says of
    a sender, never a file another user could have written."""
    import json
    import os

    if os.geteuid() != 0:
        return

    entry_id = "%013d-%d-py%s" % (message["time_ms"], message["pid"], os.urandom(4).hex())
    temporary = os.path.join(_SPOOL, "tmp", entry_id)
    final = os.path.join(_SPOOL, "new", entry_id)
    os.makedirs(temporary)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    meta = {
        "format_version": 1,
        "id": entry_id,
        "source": "python",
        "time_ms": message["time_ms"],
        "pid": message["pid"],
        "uid": message["uid"],
        "executable": message["executable"],
        "comm": os.path.basename(message["executable"] or ""),
        "notes": ["written by the Python hook: the daemon was not reachable"],
        "proc_files": ["python/argv.json", "traceback.txt"],
    }
    for name, content in (
        ("traceback.txt", message["traceback"]),
        ("python/argv.json", json.dumps(message["argv"])),
        ("meta.json", json.dumps(meta)),
    ):
        path = os.path.join(temporary, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
    for directory in (os.path.join(temporary, "python"), temporary):
        descriptor = os.open(directory, os.O_RDONLY)
        os.fsync(descriptor)
        os.close(descriptor)
    os.rename(temporary, final)
    descriptor = os.open(os.path.dirname(final), os.O_RDONLY)
    os.fsync(descriptor)
    os.close(descriptor)


def _report(exc_type, exc, tb):
    if exc_type is None or issubclass(exc_type, (KeyboardInterrupt, SystemExit, BrokenPipeError)):
        return
    message = _message(exc_type, exc, tb)
    try:
        if _send(message):
            return
    except OSError:
        pass
    _write_spool(message)


_previous_excepthook = sys.excepthook


def _excepthook(exc_type, exc, tb):
    _previous_excepthook(exc_type, exc, tb)
    try:
        sys.stderr.flush()
    except Exception:
        pass
    try:
        _report(exc_type, exc, tb)
    except Exception:
        pass


sys.excepthook = _excepthook
