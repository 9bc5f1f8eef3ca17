"""Bund wire contract: generated protobuf and gRPC modules (package bund.v1)."""
