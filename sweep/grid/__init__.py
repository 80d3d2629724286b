"""The grid: compose, validate, name and record every run before any of them trains."""
