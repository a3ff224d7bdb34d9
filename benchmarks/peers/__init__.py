"""Other libraries cleanroom is compared against, each in a virtualenv of its own."""
