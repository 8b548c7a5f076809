"""What every transport (mailboxes and senders) shares: one error vocabulary and TLS.

A leaf: nothing here imports the mail engine above it.
"""
