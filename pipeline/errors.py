"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class PipelineError(Exception):
    """Bad input or a failed precondition; the message names the file and the problem."""
