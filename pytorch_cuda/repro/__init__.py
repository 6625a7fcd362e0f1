"""Stage 6, reproducibility: saving, normalizing, comparing and verifying images."""
