"""Drivers and plugins used by the core's own tests (not shipped)."""
