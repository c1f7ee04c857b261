"""The recipe: what to prune, how, and how to judge the result, as one YAML file.

``sections`` is the schema, ``load`` reads a file (``extends:``, ``--set``, paths made absolute)
into it, ``errors`` turns a validation error into one line, ``yaml_unique`` refuses duplicate
keys, ``catalog`` holds the recipes shipped in the package, ``preflight`` checks a recipe against
its model before anything is written.
"""
