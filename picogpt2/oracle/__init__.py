"""picogpt2 as a test oracle: dumps of every activation written and read
(``dumps``), a candidate's own names read as ours (``candidates``), the
judging (``comparison``) with blame by isolation (``isolation``), each
operation's rounding bound (``rounding``), a decode step that differs
placed (``decoding``), and its picture (``plot``)."""
