"""The one base class of errors that a user can fix by changing what they asked for.

A bad config value, a missing file, a run without a trained model, a beam an exported model
cannot decode with: each is a subclass raised with a one-line message that says what is
wrong and what to do, and the command line prints it as one line (exit code 2) instead of a
traceback. Kept in the core, free of TensorFlow, so that every part of the project can raise
one and the command line can catch them all without importing training code.
"""


class UsageError(ValueError):
    """Something the user asked for cannot be done as asked; the message says why."""
