"""The one base class for mistakes a person can fix: the CLI prints the message (one sentence
naming the input and the expected form) and exits 1, with no traceback."""


class MlopsError(Exception):
    pass
