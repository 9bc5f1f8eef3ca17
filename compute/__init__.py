"""Pure computation for Bund: no network, no disk, no clocks, no global state beyond the test switch."""
