"""Gather job results into tables and workbooks (`sweep collect`). Never imports torch."""
