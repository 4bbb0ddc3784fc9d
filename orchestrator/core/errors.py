"""Errors a user can hit. The CLI turns each into one line, a hint and an exit code."""

from __future__ import annotations

# Exit codes; the README's "Exit codes" table lists the same numbers.
EXIT_OK = 0
EXIT_STAGE_FAILED = 1
EXIT_INVALID = 2
EXIT_BUDGET = 3  # refused or stopped because of a budget cap
EXIT_INFEASIBLE = 4  # no placement can run some stage (does not fit, deadline)
EXIT_CLOUD = 5  # the cloud or a remote cluster failed or could not be reached
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM; the run can be resumed


class LhorchError(Exception):
    """Base of every error meant for the user rather than for a stack trace."""

    exit_code = EXIT_INVALID

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class SpecError(LhorchError):
    """A pipeline file that cannot be used: the message names file, line and field."""

    exit_code = EXIT_INVALID

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, hint: str | None = None):
        where = file or "<pipeline>"
        if line is not None:
            where += f":{line}"
        text = f"{where}: {field}: {message}" if field else f"{where}: {message}"
        super().__init__(text, hint)
        self.file, self.line, self.field = file, line, field
        self.reason = message


class UsageError(LhorchError):
    exit_code = EXIT_INVALID


class NotFoundError(LhorchError):
    """A run, stage, schedule or model that the user named does not exist."""

    exit_code = EXIT_INVALID


class StageFailed(LhorchError):
    exit_code = EXIT_STAGE_FAILED


class BudgetError(LhorchError):
    exit_code = EXIT_BUDGET


class InfeasibleError(LhorchError):
    exit_code = EXIT_INFEASIBLE


class CloudError(LhorchError):
    """A provider could not start, reach or stop what it was asked to."""

    exit_code = EXIT_CLOUD


class CapacityError(CloudError):
    """No capacity for the asked instance type in this zone (retry elsewhere)."""


class ClusterUnreachable(CloudError):
    """A cluster that should be there does not answer; the run can be resumed."""


class Interrupted(LhorchError):
    exit_code = EXIT_INTERRUPTED
