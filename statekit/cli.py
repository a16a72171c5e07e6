"""The ``statekit`` command.

Each sub-command lives in the module of the capability it belongs to and is imported
only when called, so ``statekit --help`` is fast and a missing extra only affects the
command that needs it. A sub-command is a function ``main(argv) -> exit status``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from types import FrameType
from urllib.parse import quote

from .errors import StatekitError

__all__ = ["COMMANDS", "COMMAND_EXTRAS", "DEV_STOP_TIMEOUT", "RUN_DIR", "PlainHelpFormatter",
           "bounded_int", "check_pid_file", "default_pid_file", "dev", "find_pid_file", "main",
           "module_missing", "plain", "port_number"]

#: command -> ("module:function", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "dev": ("statekit.cli:dev", "start a private Redis and S3 endpoint; print their URLs"),
    "serve": ("statekit.gunicorn:serve_main", "run a WSGI or ASGI app on gunicorn with drain and reload"),
    "reload": ("statekit.gunicorn:reload_main", "zero-downtime reload of a running 'statekit serve'"),
    "broadcast": ("statekit.broadcast:main", "run a broadcaster's jobs (module:broadcaster)"),
    "migrate-uploads": ("statekit.migrate:main", "copy a local uploads directory to a blob store"),
    "phoenix": ("statekit.phoenix:main", "certify an app stateless: load, kills, reloads, report"),
    "audit": ("statekit.audit:main", "find per-process state in a codebase (static check)"),
}

#: third-party modules the commands import that :data:`statekit.backends.EXTRAS` does
#: not list (the library itself never needs them) -> the extra that installs them
COMMAND_EXTRAS: dict[str, str] = {"requests": "server", "uvicorn": "asgi", "uvicorn_worker": "asgi"}


_ROLE = re.compile(r":[a-z]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")


def plain(text: str) -> str:
    """*text* (a docstring, a help string) without its reST markup, for a terminal:
    ``:func:`~a.b``` becomes ``a.b``, double backticks and ``*emphasis*`` go."""
    text = _ROLE.sub(lambda m: m.group(1), text)
    text = text.replace("``", "")
    text = re.sub(r"(?<![\w*])\*(?!\s)([^*\n]+?)\*(?![\w*])", r"\1", text)
    return text.replace("::\n", ":\n")


class PlainHelpFormatter(argparse.HelpFormatter):
    """argparse's formatter for descriptions and help strings written in reST: the
    terminal shows plain text (see :func:`plain`), paragraphs kept apart."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = re.split(r"\n\s*\n", textwrap.dedent(plain(text)).strip())
        return "\n\n".join(super(PlainHelpFormatter, self)._fill_text(p, width, indent)
                             for p in paragraphs)

    def _expand_help(self, action: argparse.Action) -> str:
        return plain(super()._expand_help(action))


def bounded_int(text: str, low: int, high: int, what: str) -> int:
    """For an argparse type: *text* as a whole number from *low* to *high*, else a
    usage error saying it is not *what*."""
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535 (a usage error otherwise)."""
    return bounded_int(text, 0, 65535, "a port number (0 to 65535)")


#: the run directory: what a command leaves for a later one (``statekit serve``'s pid
#: file for ``statekit reload``, ``migrate-uploads``' manifest), under the current
#: directory; ``/.statekit/`` is in the project's ``.gitignore``
RUN_DIR = ".statekit"


def default_pid_file(bind: str) -> str:
    """Where ``statekit serve --bind BIND`` writes its master's pid by default:
    ``.statekit/serve-HOST-PORT.pid``. One file per address, so two servers started
    from one directory (on two ports) do not claim the same file."""
    name = re.sub(r"[^A-Za-z0-9.]+", "-", bind).strip("-") or "default"
    return os.path.join(RUN_DIR, f"serve-{name}.pid")


def _started_after(pid: int, path: str) -> bool:
    """Whether process *pid* started after the pid file *path* was last written (Linux;
    False where it cannot tell). Then it is not the process that wrote its pid there but
    one that got the pid later: the file is stale (its server died without removing it,
    by SIGKILL, a crash or a reboot), whatever the new process's command line."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ticks = int(f.read().rpartition(b")")[2].split()[19])  # field 22, starttime
        written = os.stat(path).st_mtime
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)  # the clock starttime counts in
    except (OSError, ValueError, IndexError, AttributeError):
        return False
    started = ticks / os.sysconf("SC_CLK_TCK")
    return started > written - time.time() + since_boot + 1.0  # 1 s: clock ticks, file times


def check_pid_file(path: str, pid: int) -> None:
    """Refuse pid file *path* (naming *pid*) when it is stale: :func:`_started_after`.

    :raises ConfigError: the process *pid* started after the file was written."""
    from .errors import ConfigError

    if _started_after(pid, path):
        raise ConfigError(f"{path} is stale: process {pid} started after the file was written, so it is "
                          "not the server that wrote it (that one is gone). Remove the file, or give the "
                          "master's PID")


def _catches(pid: int, signum: int) -> bool | None:
    """Whether process *pid* has a handler for *signum* (Linux ``/proc``: ``SigCgt``),
    or ``None`` where that cannot be read (no such process, no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_serve_master(pid: int) -> None:
    """Refuse to send SIGHUP to *pid* when it has no handler for it (Linux; where that
    cannot be read, nothing is refused). A ``statekit serve`` master reloads on SIGHUP,
    however it was started (the script, ``python -m``, a wrapper, gunicorn with the
    hooks); most other processes end on it: a shell, one of the server's workers,
    whatever a mistyped pid names.

    :raises ConfigError: *pid* does not handle SIGHUP."""
    from .errors import ConfigError

    if _catches(pid, signal.SIGHUP) is False:
        raise ConfigError(f"process {pid} does not handle SIGHUP, which would end it: it is not a statekit "
                          "serve master (a worker of one, a shell, another program); give the master's pid, "
                          "or --pid FILE")


def _serving(pid: int, path: str) -> bool:
    """Whether *pid*, read from pid file *path*, is alive and the process that wrote
    it (not one that got the pid after its server died)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not _started_after(pid, path)


def find_pid_file(run_dir: str = RUN_DIR) -> str:
    """The pid file of the one ``statekit serve`` started from this directory that is
    still running, for ``statekit reload`` without arguments.

    :raises ConfigError: none is running, or several are (the message lists them)."""
    from .errors import ConfigError

    live = []
    for name in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []:
        path = os.path.join(run_dir, name)
        if not (name.startswith("serve-") and name.endswith(".pid")):
            continue
        try:
            with open(path) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if pid > 1 and _serving(pid, path):
            live.append(path)
    if not live:
        raise ConfigError(f"no running statekit serve has a pid file under ./{run_dir}/ (start it from this "
                          "directory, or give --pid FILE or the master's PID)")
    if len(live) > 1:
        raise ConfigError(f"several statekit serve are running from this directory: {', '.join(live)}; "
                          "choose one with --pid FILE")
    return live[0]


def _load(target: str) -> object:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def module_missing(module: str, error: BaseException) -> bool:
    """Whether *error*, raised importing *module*, says that *module* itself (or a
    package it is in) does not exist: a usage error, told in one line. Not an import
    that fails inside an existing module (the user's code, whose traceback they need).
    An :exc:`ImportError` raised while handling the missing module counts (gunicorn's
    ``Failed to find application, did you mean 'app:app'?`` for ``app.py:app``)."""
    cause = error if isinstance(error, ModuleNotFoundError) else error.__context__
    name = getattr(cause, "name", None) if isinstance(error, ImportError) else None
    return isinstance(cause, ModuleNotFoundError) and bool(name) and (
        module == name or module.startswith(f"{name}.")
    )


def _missing_extra(error: ModuleNotFoundError) -> str | None:
    """The extra that installs the module *error* could not import, if an extra does."""
    from .backends import EXTRAS

    top = (error.name or "").split(".")[0]
    return EXTRAS.get(top) or COMMAND_EXTRAS.get(top)


def main(argv: Sequence[str] | None = None) -> int:
    """``statekit COMMAND [ARGS...]``: run a sub-command and return its exit status."""
    try:
        status = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at exit as an ignored error
        return status
    except BrokenPipeError:
        return _broken_pipe()


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: statekit COMMAND [ARGS...]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<16} {text}")
        print("\n'statekit COMMAND --help' tells more.")
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from . import __version__

        print(f"statekit {__version__}")
        return 0
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"statekit: unknown command {args[0]!r}; see 'statekit --help'", file=sys.stderr)
        return 2
    try:
        func = _load(entry[0])
        return int(func(args[1:]) or 0)  # type: ignore[operator]
    except StatekitError as e:
        print(f"statekit {args[0]}: {type(e).__name__}: {e}", file=sys.stderr)
        return int(getattr(e, "exit_status", 1))  # the command's own, if it gives one (serve's)
    except ModuleNotFoundError as e:
        extra = _missing_extra(e)
        if extra is None:  # not one of ours (the user's own module): the traceback helps
            raise
        print(f"statekit {args[0]}: needs the {e.name!r} package: pip install 'statekit[{extra}]'",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _broken_pipe() -> int:
    """The reader of our output went away (``statekit audit . | head``): stop without a
    traceback, and exit as a command killed by SIGPIPE does (128 + 13)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # what is still buffered goes nowhere at exit
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


#: seconds the process group of ``statekit dev``'s command gets to exit after a stop
#: signal (or after the command exited, leaving processes behind) before it is SIGKILLed
DEV_STOP_TIMEOUT = 30.0

#: the signals that stop ``statekit dev`` -> the one its command's group gets: SIGHUP
#: (the terminal closed) stops it as SIGTERM does (a HUP would reload a gunicorn)
_DEV_STOP_SIGNALS: dict[int, int] = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM,
                                     signal.SIGHUP: signal.SIGTERM}


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether *proc* has exited, without reaping it: until ``proc.wait()`` its pid, and
    so its process group's id, cannot be given to another process."""
    if not hasattr(os, "waitid"):  # pragma: no cover (not Linux nor macOS)
        return proc.poll() is not None
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _group_running(proc: subprocess.Popen[bytes]) -> bool:
    """Whether a process of *proc*'s group (*proc* leads it) still runs: *proc*, or on
    Linux any other member that is not a zombie. Elsewhere only *proc* can be seen."""
    if not _exited(proc):
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return False
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rpartition(b")")[2].split()  # state, ppid, pgrp, ...
            except OSError:
                continue
            if len(fields) > 2 and fields[2] == str(proc.pid).encode() and fields[0] not in (b"Z", b"X"):
                return True
    return False


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Send *signum* to the process group *proc* leads (only while *proc* is not reaped)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def _stop_signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Send stop signal *signum* to *proc*'s group, then SIGCONT: a group stopped by
    Ctrl-Z would not act on it before it is continued (as a shell's ``kill %1``)."""
    _signal_group(proc, signum)
    _signal_group(proc, signal.SIGCONT)


def _stopped(proc: subprocess.Popen[bytes]) -> bool:
    """Whether *proc* stopped (SIGTSTP, SIGTTIN, SIGSTOP...) since last asked."""
    if not hasattr(os, "waitid"):  # pragma: no cover (not Linux nor macOS)
        return False
    try:
        return os.waitid(os.P_PID, proc.pid, os.WSTOPPED | os.WNOHANG) is not None
    except ChildProcessError:
        return False


def _terminal(fd: int | None) -> int | None:
    """The process group in the foreground of terminal *fd*, ``None`` when *fd* is not
    dev's controlling terminal."""
    try:
        return os.tcgetpgrp(fd) if fd is not None else None
    except OSError:
        return None


def _give_terminal(fd: int, pgrp: int) -> None:
    """Make *pgrp* the foreground process group of terminal *fd*, as a shell does for
    a job, from the foreground or not: SIGTTOU (which would stop a background caller)
    is blocked meanwhile."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, pgrp)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _dev_child(parent: int, terminal: int | None) -> None:  # runs in the child between fork and exec
    """The command's setup: a process group of its own, in dev's session (its
    controlling terminal is dev's); the terminal's foreground if *terminal* is given,
    before it runs (it may read from it at once); SIGTERM when dev dies."""
    from .embedded import _die_with_parent

    _die_with_parent(parent, signal.SIGTERM)  # and its own process group
    if terminal is not None:
        _give_terminal(terminal, os.getpgrp())


def _suspend(proc: subprocess.Popen[bytes], terminal: int | None) -> None:
    """dev's command stopped (Ctrl-Z): stop as its job would, then continue it when dev
    is continued. From a *terminal*, dev takes it back and stops its own process group
    (the job its shell started: dev, or ``make`` and dev), as the terminal's Ctrl-Z would
    have, so the shell has its prompt; ``fg`` gives dev the terminal and continues it:
    dev hands the terminal on to the command and continues its group (after ``bg``:
    without the terminal). Without a terminal dev stops itself only (someone sent it
    SIGTSTP). A group no shell could continue (orphaned) is not stopped by the kernel:
    the command is continued at once."""
    if terminal is not None and _terminal(terminal) == proc.pid:
        _give_terminal(terminal, os.getpgrp())
    handler = signal.signal(signal.SIGTSTP, signal.SIG_DFL)
    try:  # returns once dev is continued
        if terminal is not None:
            os.killpg(os.getpgrp(), signal.SIGTSTP)
        else:
            os.kill(os.getpid(), signal.SIGTSTP)
    finally:
        signal.signal(signal.SIGTSTP, handler)
    if terminal is not None and _terminal(terminal) == os.getpgrp():
        _give_terminal(terminal, proc.pid)
    _signal_group(proc, signal.SIGCONT)


def _stop_group(proc: subprocess.Popen[bytes], asked: bool) -> None:
    """Once dev's command exited, or was forwarded a stop signal (*asked*): SIGTERM to
    what it left running (not asked), a wait of up to :data:`DEV_STOP_TIMEOUT` for every
    process of its group (a graceful stop takes its time), then SIGKILL to the group."""
    if not asked and _group_running(proc):
        _stop_signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + DEV_STOP_TIMEOUT
    while _group_running(proc):
        if time.monotonic() >= deadline:
            _signal_group(proc, signal.SIGKILL)
            return
        time.sleep(0.1)


def dev(argv: Sequence[str]) -> int:
    """``statekit dev [--blobs-dir DIR] [-- COMMAND ...]``: start a private Redis and S3
    endpoint.

    Prints their URLs and an environment block to paste, then waits for Ctrl-C,
    SIGTERM or SIGHUP and stops both. With a command after ``--``, runs it with the
    variables set and stops the servers when it exits (or on a stop signal, after
    stopping it). The command runs in a process group of its own. Run from a terminal
    (on stdin), it is the terminal's foreground job, as a shell makes it: it can read
    the terminal, Ctrl-C and Ctrl-Z reach its whole group; when it stops, dev stops
    too (the shell's prompt comes back) and ``fg`` continues both. SIGINT, SIGTERM,
    SIGHUP (as SIGTERM) and SIGTSTP sent to dev are passed on to the command's whole
    process group (a shell's or launcher's children too), which gets 30 s to exit
    before it is killed; processes the command leaves behind when it exits get SIGTERM.

    The S3 endpoint (moto) keeps its objects in memory: they are gone when ``statekit
    dev`` stops. With ``--blobs-dir DIR`` no S3 endpoint is started and
    ``STATEKIT_BLOBS_URL`` is the ``file://`` store in *DIR* (created if missing), which
    keeps its files across restarts: use it when your database outlives the servers
    (the demo keeps its SQLite file and its photos in ``examples/flask_app/instance``).
    """
    from .embedded import RedisServer, S3Server, bind_in_use

    parser = argparse.ArgumentParser(prog="statekit dev", description=dev.__doc__,
                                     formatter_class=PlainHelpFormatter)
    parser.add_argument("--bucket", default="statekit", help="bucket to create (default statekit)")
    parser.add_argument("--redis-port", type=port_number, default=0, metavar="PORT",
                        help="loopback port for Redis (default: a free one)")
    parser.add_argument("--s3-port", type=port_number, default=0, metavar="PORT",
                        help="loopback port for the S3 endpoint (default: a free one)")
    parser.add_argument("--blobs-dir", metavar="DIR",
                        help="keep blobs in a file:// store in DIR (kept across restarts) instead of "
                             "starting the S3 endpoint")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="command to run with the variables set, after -- (default: wait for Ctrl-C)")
    opts = parser.parse_args(list(argv))
    command = opts.command[1:] if opts.command[:1] == ["--"] else opts.command
    fixed = (("--redis-port", opts.redis_port), ("--s3-port", 0 if opts.blobs_dir else opts.s3_port))
    for option, port in fixed:
        if port and bind_in_use(f"127.0.0.1:{port}"):  # one line, not the server's startup log
            print(f"statekit dev: 127.0.0.1:{port} is in use (another server listens there): choose "
                  f"another {option}, or leave it out for a free one", file=sys.stderr)
            return 2
    blobs_url = None
    if opts.blobs_dir:
        from .blobs import open_blob_store

        blobs_url = f"file://{quote(os.path.abspath(opts.blobs_dir))}?create=1"
        open_blob_store(blobs_url)  # ConfigError now for a directory that cannot be made

    stop = threading.Event()
    child: list[subprocess.Popen[bytes]] = []

    received: list[tuple[int, bool]] = []  # (signal, whether a command was running)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        received.append((signum, bool(child)))
        for proc in child:  # not yet reaped (see _exited): the group id is still its
            _stop_signal(proc, _DEV_STOP_SIGNALS[signum])

    def on_tstp(signum: int, frame: FrameType | None) -> None:  # Ctrl-Z where dev has the terminal
        for proc in child:  # the loop below stops dev once the command has stopped
            _signal_group(proc, signal.SIGTSTP)

    redis_srv = RedisServer(port=opts.redis_port)  # ConfigError if there is no server binary
    try:
        s3_srv = None if blobs_url else S3Server(opts.bucket, port=opts.s3_port)
    except BaseException:
        redis_srv.stop()  # its temporary directory
        raise
    old = {s: signal.signal(s, on_signal) for s in _DEV_STOP_SIGNALS  # nohup's ignored SIGHUP is kept
           if not (s == signal.SIGHUP and signal.getsignal(s) == signal.SIG_IGN)}
    try:
        redis_srv.start()
        if s3_srv is not None:
            s3_srv.start()
        env = {
            "STATEKIT_REDIS_URL": redis_srv.url,
            "STATEKIT_BLOBS_URL": s3_srv.url if s3_srv is not None else str(blobs_url),
        }
        print(f"Redis    {redis_srv.url}  ({redis_srv.binary.line}, pid {redis_srv.pid})")
        if s3_srv is not None:
            print(f"S3       {s3_srv.endpoint_url}  bucket {opts.bucket!r} (moto, pid {s3_srv.pid}; "
                  "in memory: its objects go when dev stops)")
        else:
            print(f"Blobs    {blobs_url}  (files, kept across restarts)")
        print("\n# paste into your shell:")
        for k, v in env.items():
            print(f"export {k}={shlex.quote(v)}")
        sys.stdout.flush()
        if command:
            if stop.is_set():  # stopped while the servers were starting
                return 0
            # the command's own process group (dev's signals reach all of it), in dev's session;
            # with the terminal on stdin and dev in its foreground, the terminal's foreground
            terminal = 0 if os.isatty(0) else None
            foreground = _terminal(terminal) == os.getpgrp()
            old[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, on_tstp)
            try:
                proc = subprocess.Popen(  # noqa: S603
                    command, env={**os.environ, **env},
                    preexec_fn=functools.partial(  # noqa: PLW1509 (SIGTERM when dev dies, even by SIGKILL)
                        _dev_child, os.getpid(), terminal if foreground else None
                    ),
                )
            except OSError as e:
                print(f"statekit dev: cannot run {command[0]!r}: {e.strerror}", file=sys.stderr)
                return 127 if isinstance(e, FileNotFoundError) else 126
            child.append(proc)
            try:
                if received and not received[-1][1]:  # the signal came before the command existed
                    _stop_signal(proc, _DEV_STOP_SIGNALS[received[-1][0]])
                while not _exited(proc) and not stop.is_set():
                    stop.wait(0.2)
                    if _stopped(proc) and not stop.is_set():
                        _suspend(proc, terminal)
                _stop_group(proc, asked=stop.is_set())
            finally:
                child.clear()  # reaped next: its group id is no longer dev's to signal
                if terminal is not None and _terminal(terminal) == proc.pid:
                    _give_terminal(terminal, os.getpgrp())  # the command had it: dev takes it back
            status = proc.wait()
            # a command killed by signal N exits 128 + N, as in a shell
            return 0 if stop.is_set() else status if status >= 0 else 128 - status
        print("\nPress Ctrl-C to stop.", flush=True)
        while not stop.wait(1):
            if not (redis_srv.running and (s3_srv is None or s3_srv.running)):
                print("statekit dev: a server exited unexpectedly", file=sys.stderr)
                return 1
        return 0
    finally:
        if s3_srv is not None:
            s3_srv.stop()
        redis_srv.stop()
        for s, h in old.items():
            signal.signal(s, h)
        print("statekit dev: servers stopped", flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
