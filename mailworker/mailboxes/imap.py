"""The IMAP adapter: reads one folder, oldest first, and removes only what was acked."""

from __future__ import annotations

import contextlib
import imaplib
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from imapclient import DELETED, IMAPClient
from imapclient.exceptions import LoginError

from integrations.models import EmailIntegration, Encryption
from mailworker.mailboxes.base import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TIMEOUT_SECONDS,
    FetchedMessage,
    Mailbox,
    MailboxAuthError,
    MailboxError,
)
from mailworker.mailboxes.oauth import log_in_with_token
from mailworker.transport.errors import TransportErrorKind, kind_of_os_error
from mailworker.transport.tls import (
    describe_connection_error,
    ssl_context_for,
    uses_starttls,
    uses_tls,
)

logger = logging.getLogger(__name__)

# One FETCH asks for at most this many messages, or this many bytes of bodies: a batch of
# large messages is then never held in memory at once, only one chunk of it.
FETCH_CHUNK_MESSAGES = 100
FETCH_CHUNK_BYTES = 32 * 1024 * 1024
MAX_FOLDERS_NAMED = 10
# Set with \Deleted on what we ack, so that a pass killed between STORE and EXPUNGE leaves
# messages the next pass can tell from ones a person flagged \Deleted.
ACKED_KEYWORD = "$ServicedeskAcked"


class ImapMailbox(Mailbox):
    def __init__(
        self,
        integration: EmailIntegration,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.integration = integration
        self.host = integration.effective_incoming_server
        self.port = integration.effective_incoming_port
        self.folder = integration.incoming_folder
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self._client: IMAPClient | None = None
        self._uidvalidity: int | None = None
        self.exists_on_select = 0
        self._marks_acks = False

    # Connecting ----------------------------------------------------------------------

    def connect(self) -> None:
        try:
            with self._failures("loading the CA certificate"):
                context = ssl_context_for(self.integration) if uses_tls(self.integration) else None
            with self._failures("connecting"):
                self._client = IMAPClient(
                    self.host,
                    self.port,
                    ssl=self.integration.incoming_encryption == Encryption.SSL,
                    ssl_context=context,
                    timeout=self.timeout,
                )
            if uses_starttls(self.integration):
                self._start_tls(self._client, context)
            self._log_in(self._client)
            self._select_folder(self._client)
        except BaseException:
            self.close()
            raise

    def _start_tls(self, client: IMAPClient, context: ssl.SSLContext | None) -> None:
        with self._failures("asking for STARTTLS"):
            offered = client.has_capability("STARTTLS")
        if not offered:
            raise MailboxError(
                f"{self.host}:{self.port} does not offer STARTTLS, which the integration's "
                "encryption requires: the password was not sent in clear text. Choose SSL/TLS "
                "(usually port 993) if the server has it.",
                kind=TransportErrorKind.TLS_HANDSHAKE,
            )
        with self._failures("starting TLS with STARTTLS"):
            client.starttls(context)

    def _log_in(self, client: IMAPClient) -> None:
        if self.integration.uses_oauth:
            log_in_with_token(self.integration, lambda token: self._log_in_xoauth2(client, token))
            return
        username = self.integration.incoming_username
        with self._failures(f"logging in as {username}"):
            try:
                client.login(username, self.integration.incoming_password)
            except LoginError as exc:
                raise MailboxAuthError(
                    f"{self.host}:{self.port} refused the login of {username}: {_server_text(exc)}"
                ) from exc

    def _log_in_xoauth2(self, client: IMAPClient, token: str) -> None:
        username = self.integration.oauth_mailbox
        with self._failures(f"logging in as {username} with OAuth 2.0 (XOAUTH2)"):
            try:
                client.oauth2_login(username, token)
            except LoginError as exc:
                raise MailboxAuthError(
                    f"{self.host}:{self.port} refused the OAuth 2.0 token for {username}: "
                    f"{_server_text(exc)}. Check that IMAP is enabled for the mailbox and that "
                    "the app was granted IMAP access."
                ) from exc

    def _select_folder(self, client: IMAPClient) -> None:
        with self._failures(f"opening the folder {self.folder!r}"):
            try:
                response = client.select_folder(self.folder)
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                if not client.folder_exists(self.folder):
                    raise MailboxError(
                        self._missing_folder_message(client),
                        kind=TransportErrorKind.FOLDER_MISSING,
                    ) from exc
                # Logged in, but the folder cannot be opened (no right to it, say).
                raise MailboxError(
                    describe_connection_error(
                        _readable(exc),
                        host=self.host,
                        port=self.port,
                        action=f"opening the folder {self.folder!r}",
                    ),
                    kind=TransportErrorKind.FOLDER_MISSING,
                ) from exc
        self._uidvalidity = int(response[b"UIDVALIDITY"])
        self.exists_on_select = int(response.get(b"EXISTS", 0))
        self._marks_acks = b"\\*" in response.get(b"PERMANENTFLAGS", ())
        if self._marks_acks:
            self._finish_interrupted_acks(client)

    def _finish_interrupted_acks(self, client: IMAPClient) -> None:
        """Expunge what an earlier pass acked but could not expunge (it was killed between
        STORE and EXPUNGE). Only messages carrying our ack keyword: \\Deleted flags set by
        people sharing the mailbox are theirs to expunge."""
        with self._failures("removing messages acked by an interrupted pass"):
            leftovers = client.search(["DELETED", "KEYWORD", ACKED_KEYWORD])
            if leftovers and client.has_capability("UIDPLUS"):
                client.uid_expunge(leftovers)

    def _missing_folder_message(self, client: IMAPClient) -> str:
        names = [name for _flags, _delimiter, name in client.list_folders()]
        shown = ", ".join(sorted(names)[:MAX_FOLDERS_NAMED])
        more = ", ..." if len(names) > MAX_FOLDERS_NAMED else ""
        return (
            f"The folder {self.folder!r} does not exist in the mailbox "
            f"{self.integration.incoming_username} on {self.host}:{self.port}. "
            f"Its folders: {shown}{more}."
        )

    # Reading and removing ------------------------------------------------------------

    def fetch(self, *, limit: int = DEFAULT_BATCH_SIZE) -> Iterator[FetchedMessage]:
        client = self._connected_client()
        if limit <= 0:
            return
        with self._failures(f"listing the messages in {self.folder!r}"):
            # Skip \Deleted ones: acked by a pass whose EXPUNGE did not happen.
            uids = sorted(client.search(["NOT", "DELETED"]))[:limit]
            sizes = _sizes(client, uids) if uids else {}
        for chunk in _chunks([uid for uid in uids if uid in sizes], sizes, self.max_message_bytes):
            with self._failures(f"reading messages from {self.folder!r}"):
                messages = self._fetch_chunk(client, chunk, sizes)
            yield from messages

    def _fetch_chunk(
        self, client: IMAPClient, uids: list[int], sizes: dict[int, int]
    ) -> list[FetchedMessage]:
        whole = [uid for uid in uids if sizes[uid] <= self.max_message_bytes]
        headers_only = [uid for uid in uids if sizes[uid] > self.max_message_bytes]
        # PEEK: reading must not mark anything \Seen; a person may share the mailbox.
        data = client.fetch(whole, ["BODY.PEEK[]"]) if whole else {}
        if headers_only:
            data.update(client.fetch(headers_only, ["BODY.PEEK[HEADER]"]))
        messages = []
        for uid in uids:
            item = data.get(uid)
            if item is None:  # expunged by someone else since the SEARCH
                continue
            oversized = uid in headers_only
            raw = item.get(b"BODY[HEADER]" if oversized else b"BODY[]")
            if raw is None:
                continue
            messages.append(
                FetchedMessage(
                    uid=f"{self._uidvalidity}:{uid}",
                    raw=bytes(raw),
                    size=sizes[uid],
                    oversized=oversized,
                    original_path=_spool_whole(client, uid, sizes[uid]) if oversized else "",
                )
            )
        return messages

    def count(self) -> int:
        """Messages in the folder not already flagged \\Deleted, as fetch() sees them."""
        client = self._connected_client()
        with self._failures(f"counting the messages in {self.folder!r}"):
            return len(client.search(["NOT", "DELETED"]))

    def ack(self, uids: Sequence[str]) -> None:
        client = self._connected_client()
        numbers = self._uids_of_this_folder(uids)
        if not numbers:
            return
        with self._failures(f"removing {len(numbers)} processed message(s) from {self.folder!r}"):
            flags = [DELETED, ACKED_KEYWORD] if self._marks_acks else [DELETED]
            client.add_flags(numbers, flags, silent=True)
            if client.has_capability("UIDPLUS"):
                client.uid_expunge(numbers)
            else:
                # Without UIDPLUS, EXPUNGE also removes what others flagged \Deleted.
                client.expunge()

    def _uids_of_this_folder(self, uids: Sequence[str]) -> list[int]:
        numbers = []
        for uid in uids:
            validity, _, number = uid.partition(":")
            if int(validity) != self._uidvalidity:
                # The folder was recreated: this UID may now name another message. Leave it;
                # the next pass sees the message again and its processed marker.
                logger.warning("Not acking %s: the folder's UIDVALIDITY changed", uid)
                continue
            numbers.append(int(number))
        return numbers

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.logout()
        except Exception:
            try:
                client.shutdown()
            except Exception:
                logger.debug("Closing %s:%s failed", self.host, self.port, exc_info=True)

    # Helpers -------------------------------------------------------------------------

    @property
    def client(self) -> IMAPClient:
        """The connected client, for the IMAP IDLE listener (mailworker.idle)."""
        return self._connected_client()

    def _connected_client(self) -> IMAPClient:
        if self._client is None:
            raise MailboxError(f"Not connected to {self.host}:{self.port}: call connect() first.")
        return self._client

    @contextmanager
    def _failures(self, action: str) -> Iterator[None]:
        """Turn what imapclient, imaplib, ssl and socket raise into a MailboxError that says
        where and while doing what."""
        try:
            yield
        except MailboxError:
            raise
        except (imaplib.IMAP4.error, OSError, EOFError) as exc:
            message = describe_connection_error(
                _readable(exc), host=self.host, port=self.port, action=action
            )
            kind = (
                kind_of_os_error(exc)
                if isinstance(exc, OSError | EOFError)
                else TransportErrorKind.PROTOCOL
            )
            if isinstance(exc, imaplib.IMAP4.abort):
                kind = TransportErrorKind.CONNECTION_LOST
            raise MailboxError(message, kind=kind) from exc


# An oversized message is fetched this many bytes at a time (partial FETCH, RFC 3501
# BODY.PEEK[]<offset.length>) into a temporary file: memory holds one piece, whatever its size.
PIECE_BYTES = 4 * 1024 * 1024


def _spool_whole(client: IMAPClient, uid: int, size: int) -> str:
    """The whole of an oversized message in a temporary file (its path), a piece at a time.
    The pipeline stores it as the email's original and removes the file."""
    handle, path = tempfile.mkstemp(prefix="sd-imap-", suffix=".eml")
    try:
        with os.fdopen(handle, "wb") as target:
            offset = 0
            while True:
                fetched = client.fetch([uid], [f"BODY.PEEK[]<{offset}.{PIECE_BYTES}>"])
                item = fetched.get(uid) or {}
                piece = next(
                    (value for key, value in item.items() if key.startswith(b"BODY[]")), None
                )
                if not piece:
                    break
                target.write(piece)
                offset += len(piece)
                if len(piece) < PIECE_BYTES:
                    break
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return path


def _sizes(client: IMAPClient, uids: list[int]) -> dict[int, int]:
    return {
        uid: int(item[b"RFC822.SIZE"])
        for uid, item in client.fetch(uids, ["RFC822.SIZE"]).items()
        if b"RFC822.SIZE" in item
    }


def _chunks(uids: list[int], sizes: dict[int, int], max_message_bytes: int) -> Iterator[list[int]]:
    chunk: list[int] = []
    chunk_bytes = 0
    for uid in uids:
        cost = sizes[uid] if sizes[uid] <= max_message_bytes else 0
        if chunk and (len(chunk) >= FETCH_CHUNK_MESSAGES or chunk_bytes + cost > FETCH_CHUNK_BYTES):
            yield chunk
            chunk, chunk_bytes = [], 0
        chunk.append(uid)
        chunk_bytes += cost
    if chunk:
        yield chunk


def _server_text(exc: BaseException) -> str:
    """imaplib words its errors as "login failed: b'[AUTHENTICATIONFAILED] ...'"; keep the
    server's own words."""
    text = str(exc)
    for prefix in ("login failed: ", "LOGIN command error: "):
        text = text.removeprefix(prefix)
    if text.startswith(("b'", 'b"')) and text.endswith(text[1]):
        text = text[2:-1]
    return text


def _readable(exc: BaseException) -> BaseException:
    if isinstance(exc, imaplib.IMAP4.error):
        return type(exc)(_server_text(exc))
    return exc
