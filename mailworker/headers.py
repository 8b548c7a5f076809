"""Headers the desk writes on the emails it sends, and reads back to recognise them."""

# On every email the desk sends: an email that comes back carrying it is our own (a loop).
LOOP_HEADER = "X-Servicedesk-Loop"
