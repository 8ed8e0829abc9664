"""The one user-error type: a problem the user can fix, which a job prints as one line.

Every job (``cli.run_job``) turns a ``UserError`` into ``error: <message>`` and exit code 2,
never a traceback. The subclasses also derive from the builtin a caller would expect
(``ValueError``, ``FileNotFoundError``, ``ConnectionError``), so ``except ValueError`` keeps working.
Anything else that escapes a job is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Input or settings the user can fix; the message says what to change."""


class InputError(UserError, ValueError):
    """Input data or a setting the pipeline cannot use (unknown band set, missing column, empty split)."""


class MissingInput(UserError, FileNotFoundError):
    """An input the job needs does not exist yet (e.g. features not built): the message names the job to run."""


class RegistryUnavailable(UserError, ConnectionError):
    """The MLflow tracking server does not answer."""


class OutputExists(UserError, FileExistsError):
    """An output folder exists and is not one this job wrote: the job refuses to replace it."""


class MissingDependency(UserError, ImportError):
    """An optional extra the job needs is not installed: the message says which to install."""
