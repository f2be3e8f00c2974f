"""Model surgery: selection, fx rewriting with a module-tree fallback, records."""
