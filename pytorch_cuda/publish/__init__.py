"""Stage 8, publishing: push tested images, immutable tags, release manifests."""
