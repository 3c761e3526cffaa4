"""labelq's db package."""
