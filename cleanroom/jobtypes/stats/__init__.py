"""The machinery of the ``secure_stats`` job (``cleanroom.jobtypes.secure_stats``)."""
