"""What every transport (mailboxes and senders) shares: one error vocabulary, TLS and XOAUTH2.

A leaf: nothing here imports the mail engine above it.
"""
