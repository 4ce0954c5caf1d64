"""Evaluation: routing quality, metrics and end-to-end generation quality."""
