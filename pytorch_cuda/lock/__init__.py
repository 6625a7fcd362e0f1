"""Stage 3, locking: hash-locked Python environments per cell and apt pins per OS."""
