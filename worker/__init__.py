"""labelq's worker package."""
