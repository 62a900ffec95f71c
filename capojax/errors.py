"""Errors a user can act on, and the exit codes of the command lines.

A `UserError` is a mistake the user fixes by changing the command (a config value, a path, a workdir, the mesh,
a sidecar URL), as opposed to a bug. Its message is one line that says what is wrong and what to do.
`capojax.cli.run` (used by `capojax.train`, `capojax.evaluate` and `capojax.study`) prints it as
`error: <message>` on stderr with no traceback and exits with `USER_ERROR_EXIT_CODE`; `--verbose` or
`CAPOJAX_DEBUG=1` shows the traceback. Any other exception is a bug and keeps its traceback.

Subclasses also derive from the builtin their callers already catch (ValueError, FileNotFoundError, ...), so
`except ValueError` code keeps working.

Exit codes:
  0   done
  1   internal error (a traceback)
  2   user error (one line on stderr), as absl and argparse use for usage errors
  75  stopped by SIGTERM/SIGINT after saving a checkpoint: rerun the same command to resume
      (EX_TEMPFAIL of sysexits.h, "temporary failure, the user is invited to retry")
  130 a second Ctrl-C: exited at once, without a checkpoint
"""

from __future__ import annotations

USER_ERROR_EXIT_CODE = 2
STOPPED_EXIT_CODE = 75
INTERRUPTED_EXIT_CODE = 130


class UserError(Exception):
    """A mistake the user can fix; `str(error)` is the one line the command line prints."""


class ConfigError(UserError, ValueError):
    """A config value that is wrong, inconsistent, or names a key that does not exist."""


class StoppedBySignal(Exception):
    """The run stopped on SIGTERM/SIGINT after saving a checkpoint of its last completed step.

    Not an error of the user or of the code: the command line prints the message and exits with
    `STOPPED_EXIT_CODE`, so a scheduler can tell a preempted run (rerun it) from a failed one."""

    def __init__(self, signal_name: str, step: int, checkpoint_dir: str):
        self.signal_name, self.step, self.checkpoint_dir = signal_name, step, checkpoint_dir
        super().__init__(f"stopped by {signal_name} at step {step}; checkpoint saved in {checkpoint_dir}; "
                         "rerun the same command to resume")
