"""``bund serve`` with the test protocols registered: the node process of fault tests.

Usage: ``python -m tests.integration.serve_test_node NODE_TOML``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from parties.config import load_config
from parties.node import serve
from parties.protocols import PROTOCOLS
from tests.integration.fault_protocols import TEST_PROTOCOLS

if __name__ == "__main__":
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(load_config(Path(sys.argv[1])), {**PROTOCOLS, **TEST_PROTOCOLS})
