"""What the ``bund`` command sets in its process before gRPC loads; imported first by the CLI.

gRPC's C core writes its own diagnostics straight to stderr (a failed TLS handshake, a port it
could not bind), beside the one line of the command's error or the node log. The command turns
them off unless the operator asks for them: ``GRPC_VERBOSITY=debug bund ...`` shows them. The
variable is read once, when gRPC loads, so this module must be imported before anything that
imports ``grpc``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

os.environ.setdefault("GRPC_VERBOSITY", "NONE")


def lazy_module(name: str) -> ModuleType:
    """``name``, imported when one of its attributes is first read (``importlib.util.LazyLoader``).

    The command's start stays cheap: a module the command never touches is never executed.
    An import that fails raises at that first read.
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
