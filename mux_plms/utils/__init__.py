"""Small helpers shared across the package (model folders written whole and read safely)."""
