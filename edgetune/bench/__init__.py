"""Benchmarking: artifacts (runs and bundles) measured by one timing harness,
locally or on a device over SSH, reported as rows (docs/measure.md: the row format)."""
