"""The .proto contract and its generated stubs (generated code: never edit by hand)."""
