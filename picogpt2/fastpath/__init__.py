"""Faster forms of the reference's steps, where speed is what a user waits
on. Each computes exactly what ``gpt2.py`` computes, the same operations
in the same order, and its tests hold it equal to the reference bit for
bit: read ``gpt2.py`` for the definition, these files for the speed."""
