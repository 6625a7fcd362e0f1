"""Shared plumbing of every stage: errors, paths, derived names, progress, git, host tools."""
