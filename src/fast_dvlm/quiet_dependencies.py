"""Known-harmless start-up noise from dependencies, kept off the user's screen."""

import logging


class _EnumRegistrationNotice(logging.Filter):
    """torchao, which transformers imports, registers enums that torch 2.14 already supports natively;
    torch then warns twice on every start. Harmless, and not ours to fix: keep it off the user's screen."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is an Enum subclass and is now natively supported" not in record.getMessage()


logging.getLogger("torch.utils._pytree").addFilter(_EnumRegistrationNotice())
