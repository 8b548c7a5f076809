"""The Dovecot fixture (IMAP, IMAPS, POP3, POP3S on loopback). Being written."""
