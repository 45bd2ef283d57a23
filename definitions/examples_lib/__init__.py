"""Python functions called by the example workflows (`python: examples_lib.pipeline:...`).

The definitions folder is put on `sys.path` when Treadle runs, so a package kept
next to the YAML files is importable by its folder name.
"""
