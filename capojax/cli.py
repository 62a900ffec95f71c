"""The command-line wrapper that every entry point uses (`capojax.train`, `capojax.evaluate`, `capojax.study`).

    if __name__ == "__main__":
        cli.run(main)                      # absl + ml_collections flags (train, study)
        cli.run_argparse(main)             # main(argv) that builds an argparse parser (evaluate)

What it adds to absl's `app.run`:
- A `capojax.errors.UserError` (raised anywhere, also while flags are parsed) prints `error: <one line>` on
  stderr, no traceback, and exits with `USER_ERROR_EXIT_CODE`. `--verbose` or `CAPOJAX_DEBUG=1` prints its
  traceback first. Any other exception is a bug and keeps its traceback.
- A misspelt `--config.a.b=...` key (ml_collections raises a bare AttributeError before `main` runs) becomes a
  UserError naming the key and the nearest existing keys (`difflib.get_close_matches` over the config's flattened
  keys); a value that does not parse for its field becomes one line too.
- `StoppedBySignal` (a run stopped by SIGTERM/SIGINT after saving) prints its message and exits with
  `STOPPED_EXIT_CODE`, so a scheduler can tell "rerun me" from a failure.
- `run` first applies `capojax.host_memory.configure_host` (synchronous CPU dispatch, so that the trainer can keep
  its update's temporaries in resident pages), before JAX starts its backend. An argparse command that runs JAX
  calls it itself (`capojax.evaluate`).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import traceback
from typing import Any, Callable, NoReturn, Sequence

from absl import app, flags

from capojax import errors
from capojax.host_memory import configure_host

VERBOSE_FLAG = "--verbose"
DEBUG_ENV = "CAPOJAX_DEBUG"

_OVERRIDE = re.compile(r"^--?(?:no)?(?P<flag>[A-Za-z_]\w*)\.(?P<key>[^=]+)")


def verbose(argv: Sequence[str] | None = None) -> bool:
    """True when the user asked for tracebacks: `--verbose` on the command line or CAPOJAX_DEBUG=1."""
    argv = sys.argv if argv is None else argv
    return os.environ.get(DEBUG_ENV, "") not in ("", "0") or VERBOSE_FLAG in argv or f"{VERBOSE_FLAG}=true" in argv


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _fail(error: BaseException, *, with_traceback: bool = False) -> NoReturn:
    if with_traceback:
        traceback.print_exception(error)
    print(f"error: {_one_line(str(error))}", file=sys.stderr, flush=True)
    sys.exit(errors.USER_ERROR_EXIT_CODE)


def _stopped(stop: errors.StoppedBySignal) -> NoReturn:
    print(str(stop), file=sys.stderr, flush=True)
    sys.exit(errors.STOPPED_EXIT_CODE)


# ------------------------------------------------------------------------------------------------------------
# Config keys: flatten and suggest
# ------------------------------------------------------------------------------------------------------------


def flat_keys(config: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf of a ConfigDict (or nested mapping), e.g. ["algo.tau", "model.path", ...]."""
    out: list[str] = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        out.extend(flat_keys(value, path + ".") if hasattr(value, "items") else [path])
    return out


def has_key(config: Any, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "items") or part not in node:
            return False
        node = node[part]
    return True


def unknown_key_message(flag: str, key: str, config: Any) -> str:
    """One line naming the missing key and the nearest existing ones."""
    keys = flat_keys(config)
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    if close:
        hint = "did you mean " + " or ".join(f"--{flag}.{k}" for k in close) + "?"
    else:
        section = key.split(".")[0]
        same = [k for k in keys if k.startswith(section + ".")]
        hint = (f"the keys of {section} are: {', '.join(same)}" if same else
                f"the top-level sections are: {', '.join(sorted({k.split('.')[0] for k in keys}))}")
    return f"--{flag}.{key}: the config has no key {key!r}; {hint}"


def _config_flag_names() -> list[str]:
    from ml_collections.config_flags.config_flags import is_config_flag

    return [name for name in flags.FLAGS if is_config_flag(flags.FLAGS[name])]


def _flag_argument(argv: Sequence[str], name: str) -> str | None:
    """The value of `--name=VALUE` or `--name VALUE` in argv (the last one wins, as absl)."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}=") or arg.startswith(f"-{name}="):
            value = arg.split("=", 1)[1]
        elif arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _misspelt_key_error(argv: Sequence[str]) -> errors.ConfigError | None:
    """The first `--config.a.b` override whose key the loaded config lacks, as a ConfigError (None if all exist)."""
    for name in _config_flag_names():
        argument = _flag_argument(argv, name)
        if argument is None:
            continue
        try:
            config = flags.FLAGS[name].parser.parse(argument)  # the config file alone, without the overrides
        except Exception:  # the config file itself is broken: let the original error speak
            return None
        for arg in argv:
            match = _OVERRIDE.match(arg)
            if match and match["flag"] == name and not has_key(config, match["key"]):
                return errors.ConfigError(unknown_key_message(name, match["key"], config))
    return None


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing with user mistakes turned into `UserError`s (see module docstring)."""
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:  # unknown flag, a value that does not parse for its type, a missing config file
        raise errors.ConfigError(str(e)) from e
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a key the config does not have
        misspelt = _misspelt_key_error(argv)
        if misspelt is None:
            raise
        raise misspelt from e
    for name in _config_flag_names():
        value = flags.FLAGS[name].value
        try:  # ml_collections defers a config file that failed to load into an object that raises on any access
            if value is not None:
                value.keys()
        except (OSError, ImportError, SyntaxError) as e:
            raise errors.ConfigError(f"--{name}={_flag_argument(argv, name)} cannot be loaded: {e}") from e
    return rest


def run(main: Callable[[list[str]], int | None]) -> NoReturn:
    """`absl.app.run(main)` with one-line user errors (see module docstring)."""
    configure_host()
    if VERBOSE_FLAG.lstrip("-") not in flags.FLAGS:
        flags.DEFINE_bool(VERBOSE_FLAG.lstrip("-"), False, f"show tracebacks of user errors (or set {DEBUG_ENV}=1)")
    try:
        app.run(main, flags_parser=parse_flags)
    except errors.UserError as e:
        _fail(e, with_traceback=verbose())
    except errors.StoppedBySignal as stop:
        _stopped(stop)
    sys.exit(0)  # app.run exits itself; this only satisfies NoReturn


# ------------------------------------------------------------------------------------------------------------
# argparse entry points
# ------------------------------------------------------------------------------------------------------------


def _argparse_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Replaces `parser.error` (usage block + message, exit 2) by a UserError, with a did-you-mean for options."""
    unknown = re.match(r"unrecognized arguments: (.*)", message)
    if unknown:
        options = [o for action in parser._actions for o in action.option_strings]  # no public accessor
        for token in unknown[1].split():
            close = difflib.get_close_matches(token.split("=")[0], options, n=1) if token.startswith("-") else []
            if close:
                message += f" (did you mean {close[0]}?)"
                break
    raise errors.UserError(f"{message}; see `{parser.prog} --help`")


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Makes `parser.error(...)` raise a UserError (printed on one line by `run_argparse`) instead of printing the
    usage block; returns the parser."""
    parser.error = lambda message: _argparse_error(parser, message)  # type: ignore[method-assign]
    return parser


def run_argparse(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> NoReturn:
    """Runs `main(argv)` of an argparse command with the same error handling as `run`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = verbose(argv)
    if VERBOSE_FLAG in argv:
        argv.remove(VERBOSE_FLAG)
    try:
        code = main(argv)
    except errors.UserError as e:
        _fail(e, with_traceback=debug)
    except errors.StoppedBySignal as stop:
        _stopped(stop)
    sys.exit(code or 0)
