"""The roles a party holds in a federation: a certificate's organisational unit names one."""

from __future__ import annotations

#: Every role a party may hold (``bund party init --role``).
ROLES = ("bank", "tax", "registry", "hospital", "insurer", "regulator")
