"""The command line of every script, without PyTorch: run_cli, UserError, a one-line ArgumentParser and
checked argument types. Every expected failure ends in one line on stderr; only a bug shows a traceback."""
import argparse
import codecs
import contextlib
import gc
import math
import re
import signal
import sys

from helpers import memory, stop


one_line_ctrl_c = stop.while_importing  # Each script calls it before it imports torch.


def _printable(e):
    """A codecs error handler: a file name's bytes that are not UTF-8 (held as surrogates) are written
    as they are, as `ls` does; a character the terminal's encoding lacks is written as \\uXXXX."""
    try:
        return codecs.lookup_error("surrogateescape")(e)
    except UnicodeError:
        return codecs.backslashreplace_errors(e)


def printable_output():
    """stdout and stderr print any name in any locale, so a print never ends a run in a UnicodeEncodeError."""
    codecs.register_error("helpers.printable", _printable)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):  # not a TextIOWrapper (a test's capture)
            stream.reconfigure(errors="helpers.printable")


class UserError(Exception):
    """A problem with the user's input or files: printed as one line, no traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other error of the scripts."""

    def error(self, message):
        if message.startswith("ambiguous option:"):  # name the flags of --help, not a hidden old name
            head, _, matches = message.partition(" could match ")
            message = f"{head} could match {', '.join(m for m in matches.split(', ') if m in self.visible_flags())}"
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)

    def visible_flags(self):
        """The flags --help shows (a hidden old name, such as --force, is not among them)."""
        return set(re.findall(r"--[A-Za-z0-9][\w-]*", self.format_usage()))

    def parse_known_args(self, args=None, namespace=None):
        # A flag shortened so that it fits one flag of --help is that flag, even where a hidden old
        # name starts the same way (--data: --data-path, not "ambiguous with --data-root").
        args = list(sys.argv[1:] if args is None else args)
        visible = self.visible_flags()
        for i, arg in enumerate(args):
            if arg == "--":
                break
            name, eq, value = arg.partition("=")
            fits = [f for f in visible if f.startswith(name)] if name.startswith("--") and name not in visible else []
            if len(fits) == 1:
                args[i] = fits[0] + eq + value
        # An empty value ('' from an unset shell variable) would read as "not given" and quietly
        # fall back to a default path, so it is refused for every flag and argument.
        ns, rest = super().parse_known_args(args, namespace)
        for dest, value in vars(ns).items():
            if value == "" or (isinstance(value, list) and "" in value):
                flag = "--" + dest.replace("_", "-")
                self.error(f"{flag if flag in self.format_usage() else dest} is empty")  # else: a positional
        return ns, rest


def add_overwrite(parser, help):
    """--overwrite, the one flag that lets a script replace a file that cost training or a download
    to make; --force is its old name, hidden."""
    parser.add_argument("--overwrite", action="store_true", help=help)
    parser.add_argument("--force", dest="overwrite", action="store_true", help=argparse.SUPPRESS)


def run_cli(main, parser, argv=None):
    """Parse the command line and run main(args); each expected failure ends in one line."""
    printable_output()
    try:
        stop.install()
        main(parser.parse_args(argv))
        # The work is done. Frozen objects are left to the process's end, so the exit does not walk
        # torch's many objects once more; stdout is still flushed and atexit handlers still run.
        gc.freeze()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:  # its message is the signal's name (stop.install)
        signum = next((s for s in stop.SIGNALS if stop.name(s) == str(e)), signal.SIGINT)
        print(f"error: interrupted ({stop.name(signum)}); files being written were left as they were", file=sys.stderr)
        sys.exit(128 + signum)
    except OSError as e:  # disk full, permission denied, a vanished file: the system's own words
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        sys.exit(1)
    except (MemoryError, RuntimeError) as e:  # torch's out-of-memory errors (CUDA and CPU) are RuntimeErrors
        if not memory.is_out_of_memory(e):
            raise
        print(f"error: out of memory ({first_line(e, 160)}); try smaller settings (--batch-size, --img-size)",
              file=sys.stderr)
        sys.exit(1)


def first_line(e, limit=None):
    """The first line of an exception's message, or its kind when it has none."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


def describe_os_error(e):
    where = f": {e.filename}" if getattr(e, "filename", None) else ""
    return f"{e.strerror or e}{where}"


# ---------------------------------------------------------------- argument values

def int_in(low, high=math.inf):
    """A whole number in [low, high]."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}" if high < math.inf else
                                             f"must be at least {low}, got {value}")
        return value
    parse.__name__ = "whole number"
    return parse


def float_in(low, high=math.inf, low_open=False, high_open=False):
    """A finite float in [low, high]; an end is left out when its *_open is set."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if too_low or too_high or not math.isfinite(value):
            left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
            raise argparse.ArgumentTypeError(f"must be in {left}{low}, {high}{right}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


positive_int = int_in(1)
positive_float = float_in(0, low_open=True)
non_negative_float = float_in(0)
# Bounds that keep one mistyped number from taking the machine: a 1024 px crop is already 20x the
# work of 224 px; more workers than this only fight over the cores.
img_size_arg = int_in(16, 1024)
batch_size_arg = int_in(1, 1024)
workers_arg = int_in(0, 64)
seed_arg = int_in(0, 2**31 - 1)
