"""The ``cleanroom`` command line."""
