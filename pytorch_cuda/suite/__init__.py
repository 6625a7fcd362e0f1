"""Stage 7, testing: the in-container suite run against built images, and its pass records."""
