"""``llamapod.toml``: loading and validation (pydantic models per table)."""
