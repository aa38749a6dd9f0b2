"""compass's own errors. Every one carries a one-line message fit for the CLI (exit code 2)."""


class CompassError(Exception):
    """Base class of all errors compass raises on bad input, damaged data or misuse."""
