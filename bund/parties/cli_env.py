"""What the ``bund`` command sets in its process before gRPC loads; imported first by the CLI.

gRPC's C core writes its own diagnostics straight to stderr (a failed TLS handshake, a port it
could not bind), beside the one line of the command's error or the node log. The command turns
them off unless the operator asks for them: ``GRPC_VERBOSITY=debug bund ...`` shows them. The
variable is read once, when gRPC loads, so this module must be imported before anything that
imports ``grpc``.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
