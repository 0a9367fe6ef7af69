"""The one exception type users see: a message that says what is wrong and what to do."""


class FastDVLMError(Exception):
    """A problem the user can fix (bad input, unsupported model, contradictory settings).

    The CLI prints its message as a single line and exits non-zero; library callers can catch it.
    """


class ContextLengthError(FastDVLMError):
    """The prompt and the answer cap together need more positions than the model has."""
