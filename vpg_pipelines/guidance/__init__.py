"""Guidance terms (one per file), their base class and the chain that composes them."""
