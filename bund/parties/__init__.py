"""Bund party node: identity, audit, transport, jobs, protocols and the CLI."""
