"""The one exception type users see: a message that says what is wrong and what to do."""


class FastDVLMError(Exception):
    """A problem the user can fix (bad input, unsupported model, contradictory settings).

    The CLI prints its message as a single line and exits non-zero; library callers can catch it.
    """


class ContextLengthError(FastDVLMError):
    """The prompt and the answer cap together need more positions than the model has."""


def first_line(exc: BaseException, message: str | None = None) -> str:
    """The first non-blank line of `message` (by default the exception's own), for a one-line error;
    the exception's type name when there is no text at all (some libraries raise with none)."""
    text = str(exc) if message is None else message
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
