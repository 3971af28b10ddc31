"""TF-free configuration package: schema, data contract and experiments."""
