"""Errors a user can cause and fix (missing file, bad config key, corrupt clip).

The CLI prints them as one line and exits with code 2; library callers catch them by type.
"""


class UserError(Exception):
    """A problem with the user's input: its message names the thing and the fix."""


class MediaError(UserError):
    """A clip that cannot be decoded or used; corpus runs record it and go on."""
