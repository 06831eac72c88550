"""The one way a script stops on a signal. Ctrl-C (SIGINT), SIGTERM (kill, a job scheduler, a shutdown)
and SIGHUP (a closed terminal or SSH session) all stop it the same way, and what it finished is kept."""
import contextlib
import os
import signal
import stat
import sys
import threading

SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
_requested = 0


class Interrupted(Exception):
    """Raised by a loop that stopped at a safe point because a signal asked it to."""

    def __init__(self, signum):
        super().__init__(f"stopped by {name(signum)}")
        self.signum = signum


def name(signum):
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def requested():
    """The number of the signal that deferred() recorded (or request()), 0 when none."""
    return _requested


def request(signum=signal.SIGINT):
    """Record a stop from code, as a signal within deferred() would."""
    global _requested
    _requested = _requested or signum


def _quiet_if_hung_up(signum):
    """After a hang-up, a stdout or stderr that was the terminal points nowhere and a print would fail
    (EIO), so such streams go to /dev/null. The kernel reports a hung-up terminal as no terminal at all."""
    if signum != getattr(signal, "SIGHUP", None):
        return
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            if stat.S_ISCHR(os.fstat(fd).st_mode) and not os.isatty(fd):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, fd)
                os.close(devnull)


def _raise(signum, frame):
    _quiet_if_hung_up(signum)
    raise KeyboardInterrupt(name(signum))


def _exit_at_once(signum, frame):
    # Nothing is written yet, so the process can simply end. A KeyboardInterrupt inside torch's C++
    # start-up code would abort the process with a C++ error instead.
    os.write(2, f"error: interrupted ({name(signum)})\n".encode())
    os._exit(128 + signum)


def _replace_defaults(handler):
    for signum in SIGNALS:  # A signal that the user chose to ignore (nohup, a background job) stays ignored.
        if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler, _exit_at_once):
            signal.signal(signum, handler)


def while_importing():
    """Called by a script before it imports torch: a signal during those seconds ends it in one line."""
    _replace_defaults(_exit_at_once)


def install():
    """Each signal raises KeyboardInterrupt(name): the script ends in one line (cli.run_cli), and
    atomic writes remove their temporaries."""
    _replace_defaults(_raise)


@contextlib.contextmanager
def deferred(what):
    """Within the block the first signal is only recorded (see requested()) and `what` is printed;
    a second one raises KeyboardInterrupt. The earlier handlers are put back after the block."""
    global _requested
    _requested = 0
    if threading.current_thread() is not threading.main_thread():  # Python runs handlers only there.
        yield
        return

    def record(signum, frame):
        global _requested
        if _requested:
            _raise(signum, frame)
        _quiet_if_hung_up(signum)
        _requested = signum
        print(f"\n{name(signum)}: {what} ({name(signum)} again to quit now)", file=sys.stderr)

    previous = {s: signal.signal(s, record) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def ignore_in_worker(worker_id=None):
    """A worker process's start: signals are the main process's to handle. A DataLoader passes the
    worker's id, and its workers ignore SIGTERM too, so that the run can save its step. A pool passes
    nothing and keeps SIGTERM's default, because a pool ends its workers with SIGTERM."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if worker_id is None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
