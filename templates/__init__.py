"""Jinja2 templates for job scripts; loaded through importlib.resources."""
