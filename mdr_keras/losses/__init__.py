"""Loss functions and loss weights of mdr."""
