"""What a launcher does with an error: a user's mistake is one plain line, a bug a traceback.

Every launcher runs its `main` with `run(main)` instead of `app.run(main)`. The exit codes
(docs/troubleshooting.md):

    0  done
    1  a bug: Python's traceback is printed as usual
    2  a user error: one line `error: <what happened and what to do>` on stderr, nothing
       else; work already done is kept (nothing is written after the error, and a work
       directory's checkpoints stay as they are)
  130  interrupted (Ctrl-C): one line `interrupted`, no traceback; a work directory's
       checkpoints stay, and the same command resumes

A user error is one of `USER_ERRORS`: a `gradmix_tf.errors.UserError` (a config value, a
work directory, the data, a dataset not prepared, checkpoints that do not restore, a
non-finite loss), a usage error of the launcher (`app.UsageError`), or a file or directory
that cannot be read or written (`OSError`). The command line is parsed by `parse_flags`,
so that its errors (an unknown flag or `--config.` field or group, a bad flag value, a
config file that is missing or fails) are one line and exit code 2 as well: they happen
before `main` runs, where `app.run` would print its usage text and exit with code 1.
TensorFlow's op names (`{{function_node __wrapped__...}}`, `[Op:...]`) are taken out of
a message: they say nothing a user can act on.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import sys

from absl import app, flags
from ml_collections import config_dict
from ml_collections.config_flags.config_flags import is_config_flag

from gradmix_tf.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
USER_ERRORS = (UserError, app.UsageError, OSError)

_OP_NAMES = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]( name:\s*\w*)?")
"""TensorFlow's names of the op that failed, in the message of an op's error."""


def one_line(text: str) -> str:
    return " ".join(_OP_NAMES.sub("", str(text)).split())


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
    """Turns the user errors (`USER_ERRORS`) raised inside into one line and exit code 2,
    and Ctrl-C into one line and exit code 130."""
    try:
        yield
    except USER_ERRORS as error:
        fail(message_of(error))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)


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


def _config_overrides(argv, name: str) -> list[tuple[str, str]]:
    """(flag, dotted path) of each `--name.path=value` of a command line, in order."""
    pattern = re.compile(rf"^(--?{re.escape(name)}\.([^=]+))(=|$)")
    return [(m.group(1), m.group(2)) for m in map(pattern.match, argv[1:]) if m]


def _path_problem(config, path: str) -> str | None:
    """Why the dotted `path` does not lead to a field of `config` (None: it does)."""
    holder, walked = config, []
    for part in path.split("."):
        if not isinstance(holder, (config_dict.ConfigDict, dict)):
            return (
                f"{'.'.join(walked)} is {holder!r}, not a group of fields: set it whole, "
                f"e.g. --{'.'.join(['config', *walked])}=VALUE"
            )
        if part not in holder:
            field = ".".join([*walked, part])
            close = difflib.get_close_matches(part, [str(k) for k in holder], n=1)
            hint = f" (did you mean {'.'.join([*walked, close[0]])}?)" if close else ""
            return f"the config has no field {field}{hint}; the config file lists every field"
        holder, walked = holder[part], [*walked, part]
    return None


def _bad_override(error: Exception, argv) -> str:
    """config_flags's KeyError, TypeError or IndexError for an override whose path goes
    through a group the config lacks, or through a field that is not a group."""
    for name in list(flags.FLAGS):
        flag = flags.FLAGS[name]
        given = [a for a in argv[1:] if re.match(rf"--?{re.escape(name)}=", a)]
        if not is_config_flag(flag) or not given:
            continue
        try:
            config = flag.parser.parse(given[-1].split("=", 1)[1])
        except Exception:  # the config file itself fails: told by its own error
            continue
        for override, path in _config_overrides(argv, name):
            problem = _path_problem(config, path)
            if problem:
                return f"{override}: {problem}."
    return f"a --config. override does not fit the config ({type(error).__name__}: {error})"


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
    except (KeyError, TypeError, IndexError) as error:  # `--config.group.x=...`, group unknown
        fail(_bad_override(error, argv))
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
