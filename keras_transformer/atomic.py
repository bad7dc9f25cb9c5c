"""Files written whole or not at all.

A kill (or a failed export) in the middle of writing a file must not leave a truncated file
under its real name, which a later run or a user would take for a complete one.
"""

import contextlib
import os
import shutil

PARTIAL = ".partial-"


@contextlib.contextmanager
def replaced_when_done(path):
    """Yields a temporary path beside `path` (same name after a `.partial-` prefix, so the
    suffixes Keras checks are kept); renames it to `path` when the block completes and
    removes it if the block fails. The rename is atomic: readers see the old file or the
    new one, never half of it.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "note.txt")
    >>> with replaced_when_done(path) as partial:
    ...     _ = open(partial, "w").write("done")
    >>> open(path).read(), os.listdir(os.path.dirname(path))
    ('done', ['note.txt'])
    """
    directory, name = os.path.split(path)
    partial = os.path.join(directory, PARTIAL + name)
    remove(partial)
    try:
        yield partial
        if os.path.isdir(partial):
            remove(path)  # a directory cannot replace another one
        os.replace(partial, path)
    finally:
        remove(partial)


def remove(path):
    """Remove a file or a directory tree, if it exists."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
