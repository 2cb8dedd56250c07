"""picogpt2 as a test oracle: dumps of every activation written and read
(``dumps``), a candidate's own names read as ours (``candidates``), the
judging (``comparison``) with blame by isolation (``isolation``), and its
picture (``plot``)."""
