"""The one exception type the CLI turns into a single 'error: ...' line (no traceback).

Raise it for anything a user can fix: a missing path, a wrong folder layout, a corrupt file, an
impossible flag combination. The message must name the file or flag and say what was expected.

A UserError raised inside a DataLoader worker process reaches the main process re-raised by torch
with the worker's whole traceback as its message ("Caught UserError in DataLoader worker process
0. Original Traceback ..."); the constructor keeps only the original message, so the error still
prints as one line wherever it was raised."""
from __future__ import annotations

import re

_WORKER = re.compile(r"^Caught UserError in (DataLoader worker process \d+)\.\s*Original Traceback", re.S)


class UserError(Exception):
    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str) and _WORKER.match(args[0]):
            args = (worker_message(args[0]),)
        super().__init__(*args)


def worker_message(text: str) -> str:
    """The original message of a UserError re-raised from a DataLoader worker's traceback text."""
    found = re.findall(r"^(?:[\w.]+\.)?UserError: (.*)$", text, re.M)
    return found[-1].strip() if found else text.strip().splitlines()[-1]
