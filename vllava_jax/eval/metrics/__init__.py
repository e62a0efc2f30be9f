"""Scoring rules of the official evaluation code, one file per metric family."""
