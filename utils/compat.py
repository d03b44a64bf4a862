"""Imports of third-party code that needs a little care."""
import importlib
import warnings


def import_spikingjelly(module: str):
    """Import ``spikingjelly.<module>`` without the SyntaxWarnings its 0.0.0.0.12 release prints.

    Its docstrings hold invalid escape sequences ('\\p', '\\g', '\\s'); Python >= 3.12 warns about
    them whenever it compiles the files (installs without .pyc files, read-only site-packages), and
    the CLI's error messages must stay one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)     # Python 3.11 names them so
        return importlib.import_module(f"spikingjelly.{module}")
