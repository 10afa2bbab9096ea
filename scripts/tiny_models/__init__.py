"""Builders of tiny random-weight models, saved the way the hub serves the real ones."""
