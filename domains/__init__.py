"""Domain-specific parts of the workbench (sequence readers, bundled data)."""
