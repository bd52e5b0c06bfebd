"""DataError: a data file (list file, image, LMDB, HDF5, dataset source) that cannot be used."""

from minicnn.errors import MinicnnError


class DataError(MinicnnError, ValueError):
    """A bad or missing data file. ``path`` and ``line`` (1-based, 0 = the file as a whole)
    locate the problem; the message starts with ``path:line:`` when a line is known."""

    def __init__(self, message, path=None, line=0):
        self.path, self.line, self.reason = path, line, message
        if path is None:
            text = message
        elif line:
            text = f"{path}:{line}: {message}"
        else:
            text = f"{path}: {message}"
        super().__init__(text)


def need(module, package=None):
    """Import an optional dependency, or fail with the pip command that installs it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"this needs the Python package '{package or module}': "
                        f"pip install {package or module}") from None


def read_lines(path, what="list file", missing=None):
    """The lines of a text file (UTF-8), or a DataError naming ``what`` and the path (with
    ``missing`` as the message when it does not exist)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readlines()
    except FileNotFoundError:
        raise DataError(missing or f"{what} not found", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the {what}: {e}", path) from None
