"""Package-internal helpers: argument checks, TFP/Keras compatibility, atomic files."""
