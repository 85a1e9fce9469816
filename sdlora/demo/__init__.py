"""Built-in demo data: small synthetic images that need no download."""
