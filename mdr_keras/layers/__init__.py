"""Keras layers of mdr."""
