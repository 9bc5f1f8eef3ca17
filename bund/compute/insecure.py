"""The one test-only switch that admits insecure parameters (small keys, DP noise off).

It exists so unit tests can run on small keys in seconds. Production code never turns it on; the
node turns it on only when the environment variable named below is set to the exact value below,
and says so loudly in its log.
"""

from __future__ import annotations

import warnings

#: Environment variable that ``bund.parties.config`` reads once at start-up.
ENV_VAR = "BUND_INSECURE_TEST_ONLY_PARAMETERS"
#: The exact value it must hold; anything else leaves the switch off.
ENV_VALUE = "I-understand-this-is-insecure"

_enabled = False


class InsecureParametersWarning(UserWarning):
    """Emitted when insecure test-only parameters are switched on."""


def enable_insecure_test_parameters() -> None:
    """Admit small keys and noise-free DP for tests. Never call this in production."""
    global _enabled
    if not _enabled:
        warnings.warn(
            "Insecure test-only parameters are ON: small keys are accepted. Never in production.",
            InsecureParametersWarning,
            stacklevel=2,
        )
    _enabled = True


def disable_insecure_test_parameters() -> None:
    """Switch insecure test-only parameters off again (the default)."""
    global _enabled
    _enabled = False


def insecure_test_parameters_enabled() -> bool:
    """Whether the test-only switch is on."""
    return _enabled
