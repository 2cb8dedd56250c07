"""Small shared pieces: the one error base (``errors``), status lines and
progress (``status``), text in and out (``textio``), whole-or-nothing
writes and locks (``atomic``), CRC-32C (``crc32c``), memory estimates
(``memory``) and the NumPy or CuPy backend (``backend``)."""
