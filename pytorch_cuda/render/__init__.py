"""Stage 2, rendering: Dockerfiles and image manifests from templates/ into images/, and their lint."""
