"""The one exception type for mistakes a user can fix (bad config, bad data, missing files)."""


class UserError(Exception):
    """Printed by the CLI as a single line, without a traceback."""


class NotApplicable(UserError):
    """A job of a sweep whose swept setting does not apply to its method (``strength`` for a method that marks
    no field): refused alone, but in a sweep counted apart, so a grid over methods and strengths runs."""
