"""Pure cryptography and math for cleanroom's protocols: no sockets, files or clocks."""
