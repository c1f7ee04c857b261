"""A project directory's state: which steps finished with which inputs (``state``), and the
finished results a re-run replaced (``history``)."""
