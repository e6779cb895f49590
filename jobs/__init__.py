"""Thin entrypoints for `ray job submit`: each parses arguments and calls pipelines/ (see docs/pipeline.md)."""
