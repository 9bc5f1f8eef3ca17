"""Pure computation for Bund: no network, disk, clock or global state but the test switch."""
