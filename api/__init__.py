"""labelq's api package."""
