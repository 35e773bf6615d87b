"""What a launcher does with an error: a user's mistake is one plain line, a bug a traceback.

Every launcher runs its `main` with `run(main)` instead of `app.run(main)`. The exit codes
(README.md, "Troubleshooting"):

    0  done
    1  a bug: Python's traceback is printed as usual
    2  a user error: one line `error: <what happened and what to do>` on stderr, nothing
       else; work already done is kept (nothing is written after the error, and a work
       directory's checkpoints stay as they are)

A user error is one of `USER_ERRORS`: a `gradmix_tf.errors.UserError` (a config value, a
work directory, the data, a dataset not prepared, checkpoints that do not restore, a
non-finite loss), a usage error of the launcher (`app.UsageError`), or a file or directory
that cannot be read or written (`OSError`). The command line is parsed by `parse_flags`,
so that its errors (an unknown flag or `--config.` field, a bad flag value, a config file
that is missing or fails) are one line and exit code 2 as well: they happen before `main`
runs, where `app.run` would print its usage text and exit with code 1.
"""

from __future__ import annotations

import contextlib
import re
import sys

from absl import app, flags
from ml_collections.config_flags.config_flags import is_config_flag

from gradmix_tf.errors import UserError

EXIT_USER_ERROR = 2
USER_ERRORS = (UserError, app.UsageError, OSError)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def fail(message: str):
    """Prints `error: message` on one line of stderr and exits with code 2."""
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def message_of(error: BaseException) -> str:
    """The one-line message of a user error."""
    if isinstance(error, OSError) and not isinstance(error, UserError) and error.filename:
        return f"{error.filename}: {error.strerror or error}"
    return one_line(str(error))


@contextlib.contextmanager
def user_errors():
    """Turns the user errors (`USER_ERRORS`) raised inside into one line and exit code 2."""
    try:
        yield
    except USER_ERRORS as error:
        fail(message_of(error))


def _config_arg(argv) -> str:
    """The `--config=` argument of a command line (the last one), or '--config'."""
    given = [a for a in argv[1:] if re.match(r"--?config=", a)]
    return given[-1].lstrip("-") if given else "config"


def _unknown_field(error: AttributeError, argv) -> str:
    """config_flags's AttributeError for an override of a field the config lacks."""
    text = str(error).replace("\\n", "\n")
    name = re.search(r"[\w-]+", text)
    name = name.group(0) if name else "?"
    overrides = [a for a in argv[1:] if re.match(rf"--?config\.(\S+\.)?{re.escape(name)}\b", a)]
    flag = overrides[0].split("=", 1)[0] if overrides else f"--config.{name}"
    field = flag.lstrip("-").split(".", 1)[1]
    message = f"{flag}: the config has no field {field}"
    suggestion = re.search(r'Did you mean "([\w-]+)"', text)
    if suggestion:
        parent = field.rpartition(".")[0]
        message += f" (did you mean {parent + '.' if parent else ''}{suggestion.group(1)}?)"
    return message + "; the config file lists every field."


def _flag_error(error: flags.Error) -> str:
    text = str(error)
    if "Traceback (most recent call last)" in text:  # a config file's get_config failed
        head = text.split("\n", 1)[0].rstrip(":")
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        return f"{head}: {last}"
    if isinstance(error, flags.UnrecognizedFlagError):
        return f"{one_line(text)} (--helpfull lists every flag)."
    return one_line(text)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with every error as one line and exit code 2 (`fail`)."""
    try:
        remaining = flags.FLAGS(argv)
        for name in list(flags.FLAGS):
            if is_config_flag(flags.FLAGS[name]):  # a config that failed to load raises on use
                getattr(flags.FLAGS[name].value, "keys", None)
        return remaining
    except flags.Error as error:
        fail(_flag_error(error))
    except AttributeError as error:  # config_flags: `--config.x=...` of a field not in the config
        fail(_unknown_field(error, argv))
    except OSError as error:  # config_flags: the config file cannot be read
        reason = [line for line in str(error).splitlines() if line.strip()][-1].strip()
        reason = reason.split("failure to load: ")[-1]
        fail(f"--{_config_arg(argv)}: cannot load the config file: {reason}")


def run(main):
    """`app.run(main)` with user errors as one line and exit code 2 (module docstring)."""

    def main_with_user_errors(argv):
        with user_errors():
            return main(argv)

    app.run(main_with_user_errors, flags_parser=parse_flags)
