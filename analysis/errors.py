"""The one error a user can fix: bad input. `main` prints its message on one line, exits 2."""


class UserError(Exception):
    """Bad input (a missing or foreign file, too few configs, mixed devices, a bad option)."""
