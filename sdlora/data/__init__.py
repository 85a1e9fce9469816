"""Dataset: scanning folders, captions, image loading and the batch order."""
