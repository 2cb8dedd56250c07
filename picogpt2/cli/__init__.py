"""What the eight commands share: their arguments (``arguments``) and the
way each runs, failing in one line with the right exit status
(``running``). Nothing in the library imports it."""
