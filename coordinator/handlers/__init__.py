"""Handlers: plain functions taking the coordinator's state and a caller's
request, shared by the gRPC servicers and the in-process transport."""
