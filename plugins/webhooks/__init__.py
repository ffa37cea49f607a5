"""lightningd-py."""
