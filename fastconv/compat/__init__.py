"""Drop-in NumPy layer APIs backed by fastconv."""
