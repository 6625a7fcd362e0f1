"""Stage 4, the base: the OS image bootstrapped from the Debian archive, or pulled by digest."""
