"""The recipe YAML files, installed as the data package ``surgeon.recipe_files`` (see pyproject's package-dir)."""
