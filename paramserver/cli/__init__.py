"""Command line: argument parsing only, calling into the packages.

The CLI is the composition root: it is the one place in `paramserver` that may import the
client-side `workers` package (for `paramserver worker` and `launch`).
"""
