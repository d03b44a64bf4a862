"""The one exception type the CLI turns into a single 'error: ...' line (no traceback).

Raise it for anything a user can fix: a missing path, a wrong folder layout, a corrupt file, an
impossible flag combination. The message must name the file or flag and say what was expected."""


class UserError(Exception):
    pass
