"""Governance: what a reviewer reads about a version (its model card), built from the registry."""
