"""Evaluation runners and the result schema."""
