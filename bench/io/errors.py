"""The one exception type for mistakes a user can fix (bad config, bad data, missing files)."""


class UserError(Exception):
    """Printed by the CLI as a single line, without a traceback."""
