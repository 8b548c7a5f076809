"""The Microsoft Graph adapter: reads one folder of a user or shared mailbox of Microsoft 365,
incrementally, and deletes (or moves) only what was acked.

Graph's delta query lists a folder's messages in rounds: the first round lists all of them,
later rounds only what changed since the round's `@odata.deltaLink`. The link is stored
(GraphFolderState) only when every message its round listed was committed and acked, so a
pass that fails midway starts the same round again, and the processed marker recognises
what the failed pass had already committed. When Graph has forgotten the link (410 Gone)
the folder is listed from the start, which is safe for the same reason: what is still in
the folder was either never imported or is only acked.

Each message's MIME comes from `/messages/{id}/$value`, a few at a time (at most
GRAPH_CONCURRENT_REQUESTS in flight, Exchange Online's limit per mailbox being 4), and in
the order the delta listed them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import quote

from integrations.models import EmailIntegration
from mailworker.mailboxes.base import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TIMEOUT_SECONDS,
    FetchedMessage,
    Mailbox,
    MailboxError,
)
from mailworker.mailboxes.graph_client import (
    IMMUTABLE_IDS,
    DeltaExpired,
    GraphClient,
    GraphNotFound,
    TokenRejected,
)
from mailworker.models import GraphFolderState

logger = logging.getLogger(__name__)

# Graph's well-known folder names (case-insensitive); "INBOX" (IMAP's name, the field's
# default) is the Inbox too.
WELL_KNOWN_FOLDERS = frozenset(
    {"inbox", "archive", "deleteditems", "drafts", "junkemail", "sentitems", "outbox"}
)
DELTA_PAGE_SIZE = 100
# Only the id is needed to fetch a message; the time sorts a page oldest first.
DELTA_SELECT = "id,receivedDateTime"
# A header block longer than this is cut (a message over the size limit keeps only it).
MAX_HEADER_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 64 * 1024
MAX_FOLDERS_NAMED = 10


class GraphMailbox(Mailbox):
    def __init__(
        self,
        integration: EmailIntegration,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.integration = integration
        self.mailbox = integration.incoming_username.strip()
        self.folder_name = integration.incoming_folder.strip() or "inbox"
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self.client: GraphClient | None = None
        self.folder_id = ""
        self.processed_folder_id = ""
        self._pool: ThreadPoolExecutor | None = None
        # The delta round under way: the next page to ask for ("" = start a round), the
        # ids of the current page not yet handed out, and the round's closing link (set
        # once Graph gave it: the round has no more pages). A round that listed nothing
        # new ends the fetch() that started it, so an idle mailbox is not asked again.
        self._next_url = ""
        self._page: deque[str] = deque()
        self._round_link = ""
        self._saved_link = ""
        self._unacked: set[str] = set()

    # Connecting ----------------------------------------------------------------------

    def connect(self) -> None:
        try:
            self.client = GraphClient(self.integration, timeout=self.timeout)
            self.folder_id = self._folder_id(self.folder_name)
            processed = self.integration.graph_processed_folder.strip()
            if processed:
                self.processed_folder_id = self._folder_id(processed)
        except BaseException:
            self.close()
            raise

    def _folder_id(self, name: str) -> str:
        """The id of a folder given by well-known name, display name or a path of them."""
        client = self._client()
        if name.lower() in WELL_KNOWN_FOLDERS:
            return self._get_folder(client.user_url(f"/mailFolders/{name.lower()}"), name)["id"]
        parent_url = client.user_url("/mailFolders")
        folder: dict | None = None
        for part in [p for p in name.split("/") if p.strip()]:
            escaped = part.strip().replace("'", "''")
            response = client.request(
                "GET",
                parent_url,
                params={"$filter": f"displayName eq '{escaped}'", "$select": "id,displayName"},
                action=f"looking for the folder {name!r} of {self.mailbox}",
            )
            matches = response.json().get("value", [])
            if not matches:
                raise MailboxError(self._missing_folder_message(name))
            folder = matches[0]
            parent_url = client.user_url(f"/mailFolders/{quote(folder['id'])}/childFolders")
        if folder is None:
            raise MailboxError(f"Enter the folder to read in {self.mailbox}, e.g. Inbox.")
        return folder["id"]

    def _get_folder(self, url: str, name: str) -> dict:
        try:
            return (
                self._client()
                .request("GET", url, action=f"opening the folder {name!r} of {self.mailbox}")
                .json()
            )
        except GraphNotFound as exc:
            raise MailboxError(
                f"Microsoft Graph does not know the mailbox {self.mailbox} or its folder "
                f"{name!r} ({exc}). Check the mailbox's address (a user's or a shared "
                "mailbox's, e.g. support@contoso.com)."
            ) from exc

    def _missing_folder_message(self, name: str) -> str:
        try:
            response = self._client().request(
                "GET",
                self._client().user_url("/mailFolders"),
                params={"$select": "displayName", "$top": "50"},
                action=f"listing the folders of {self.mailbox}",
            )
            names = sorted(f["displayName"] for f in response.json().get("value", []))
        except MailboxError:
            names = []
        shown = ", ".join(names[:MAX_FOLDERS_NAMED]) + (
            ", ..." if len(names) > MAX_FOLDERS_NAMED else ""
        )
        return (
            f"The folder {name!r} does not exist in the mailbox {self.mailbox}. "
            + (f"Its folders: {shown}. " if shown else "")
            + "Give a display name, or a path such as Inbox/Support."
        )

    # Reading -------------------------------------------------------------------------

    def fetch(self, *, limit: int = DEFAULT_BATCH_SIZE) -> Iterator[FetchedMessage]:
        if limit <= 0:
            return
        if self._round_link and not self._page and not self._unacked:
            # The previous call ended a round and everything of it was acked: start the
            # next round from its link, for what arrived meanwhile.
            self._save_round()
            self._round_link = ""
        given = 0
        resynced = False
        while given < limit:
            if not self._page:
                if self._round_link:
                    return  # the round is over; the next call starts the next one
                try:
                    self._read_page()
                except DeltaExpired:
                    if resynced:
                        raise
                    resynced = True
                    self._forget_delta_link()
                    continue
                continue
            ids = [self._page.popleft() for _ in range(min(limit - given, len(self._page)))]
            for message in self._download(ids):
                self._unacked.add(message.uid)
                given += 1
                yield message

    def _read_page(self) -> None:
        client = self._client()
        url = self._next_url or self._stored_delta_link() or self._first_delta_url()
        response = client.request(
            "GET",
            url,
            # Replaces the session's Prefer header, so it says both.
            headers={"Prefer": f"odata.maxpagesize={DELTA_PAGE_SIZE}, {IMMUTABLE_IDS}"},
            action=f"listing the messages in {self.folder_name!r} of {self.mailbox}",
        )
        data = response.json()
        items = [
            item
            for item in data.get("value", [])
            if "@removed" not in item and item.get("id")  # what we acked, or others moved
        ]
        items.sort(key=lambda item: item.get("receivedDateTime") or "")
        self._page.extend(item["id"] for item in items)
        self._next_url = data.get("@odata.nextLink", "")
        if not self._next_url:
            self._round_link = data.get("@odata.deltaLink", "")
            if not self._round_link:
                raise MailboxError(
                    "Microsoft Graph ended a delta page without a next or delta link."
                )
            if not self._page and not self._unacked:
                self._save_round()

    def _first_delta_url(self) -> str:
        folder = quote(self.folder_id)
        return self._client().user_url(
            f"/mailFolders/{folder}/messages/delta?$select={DELTA_SELECT}"
        )

    def _stored_delta_link(self) -> str:
        state = GraphFolderState.objects.filter(
            integration=self.integration, folder_id=self.folder_id
        ).first()
        return state.delta_link if state else ""

    def _save_round(self) -> None:
        """Every message of the round was committed and acked: the next pass starts from
        the round's link."""
        if self._round_link and self._round_link != self._saved_link:
            GraphFolderState.objects.update_or_create(
                integration=self.integration,
                folder_id=self.folder_id,
                defaults={"delta_link": self._round_link},
            )
            self._saved_link = self._round_link
        self._next_url = ""

    def _forget_delta_link(self) -> None:
        logger.warning(
            "integration %s: Microsoft Graph forgot the delta link of %r; listing the folder "
            "again from the start (what was imported is recognised and only acked)",
            self.integration.name,
            self.folder_name,
        )
        GraphFolderState.objects.filter(
            integration=self.integration, folder_id=self.folder_id
        ).delete()
        self._next_url = ""
        self._page.clear()
        self._round_link = ""
        self._saved_link = ""

    def _download(self, ids: list[str]) -> Iterator[FetchedMessage]:
        """The messages' MIME, in order, with up to `concurrency` requests in flight."""
        client = self._client()
        token = client.token()
        pool = self._executor()
        window: deque[tuple[str, Future[FetchedMessage | None]]] = deque()
        pending = iter(ids)
        while True:
            while len(window) < client.concurrency:
                message_id = next(pending, None)
                if message_id is None:
                    break
                window.append((message_id, pool.submit(self._get_mime, message_id, token)))
            if not window:
                return
            message_id, future = window.popleft()
            try:
                message = future.result()
            except TokenRejected:
                token = client.refresh_token(token)
                try:
                    message = self._get_mime(message_id, token)
                except TokenRejected as exc:
                    raise client.refused_fresh_token(exc, "reading a message") from exc
            except BaseException:
                for _id, other in window:
                    other.cancel()
                raise
            if message is not None:
                yield message

    def _get_mime(self, message_id: str, token: str) -> FetchedMessage | None:
        """One message's MIME; only its header block when it is over the size limit. None
        when it is gone (a person moved or deleted it since the delta listed it)."""
        client = self._client()
        url = client.user_url(f"/messages/{quote(message_id)}/$value")
        try:
            response = client.request_with(
                token, "GET", url, action=f"reading a message of {self.mailbox}", stream=True
            )
        except GraphNotFound:
            return None
        with response:
            declared = int(response.headers.get("Content-Length") or 0)
            if declared > self.max_message_bytes:
                return self._headers_only(message_id, response, declared, b"")
            body = bytearray()
            for chunk in response.iter_content(READ_CHUNK_BYTES):
                body += chunk
                if len(body) > self.max_message_bytes:
                    return self._headers_only(message_id, response, len(body), bytes(body))
            return FetchedMessage(
                uid=message_id, raw=bytes(body), size=len(body), identity=self._identity(message_id)
            )

    def _headers_only(self, message_id: str, response, size: int, start: bytes) -> FetchedMessage:
        """An oversized message: its header block for the pipeline to parse, and the whole of
        it streamed into a temporary file (`original_path`), a chunk at a time, which the
        pipeline stores as the email's original and then removes."""
        block = bytearray(start)
        header_done = False
        written = 0
        handle, path = tempfile.mkstemp(prefix="sd-graph-", suffix=".eml")
        try:
            with os.fdopen(handle, "wb") as target:
                target.write(start)
                written += len(start)
                for chunk in response.iter_content(READ_CHUNK_BYTES):
                    target.write(chunk)
                    written += len(chunk)
                    if not header_done:
                        block += chunk
                        header_done = _header_end(block) is not None or (
                            len(block) >= MAX_HEADER_BYTES
                        )
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        end = _header_end(block)
        block = block[:end] if end is not None else block[:MAX_HEADER_BYTES]
        return FetchedMessage(
            uid=message_id,
            raw=bytes(block),
            size=max(size, written),
            oversized=True,
            identity=self._identity(message_id),
            original_path=path,
        )

    def _identity(self, message_id: str) -> str:
        """Exchange keeps no MIME: it writes it anew for each $value, so two fetches of one
        message may differ in a boundary or a date, and the bytes cannot be the processed
        marker's key. The immutable id can: it never changes while the message stays in
        this mailbox (ids are case-sensitive, so it is kept as it is)."""
        return f"graph:{self.mailbox.lower()}:{message_id}"

    # Acking ----------------------------------------------------------------------------

    def ack(self, uids: Sequence[str]) -> None:
        """Delete the messages (to Deleted Items, as Outlook does), or move them to the
        folder the admin named; a few requests at a time."""
        if not uids:
            return
        client = self._client()
        token = client.token()
        futures = [(uid, self._executor().submit(self._remove, uid, token)) for uid in uids]
        failure: BaseException | None = None
        for uid, future in futures:
            try:
                future.result()
            except TokenRejected:
                token = client.refresh_token(token)
                try:
                    self._remove(uid, token)
                except TokenRejected as exc:
                    failure = failure or client.refused_fresh_token(exc, "removing a message")
                    continue
                except BaseException as exc:
                    failure = failure or exc
                    continue
            except BaseException as exc:
                failure = failure or exc
                continue
            self._unacked.discard(uid)
        if failure is not None:
            raise failure
        if self._round_link and not self._unacked and not self._page:
            self._save_round()

    def _remove(self, message_id: str, token: str) -> None:
        client = self._client()
        url = client.user_url(f"/messages/{quote(message_id)}")
        try:
            if self.processed_folder_id:
                client.request_with(
                    token,
                    "POST",
                    f"{url}/move",
                    json={"destinationId": self.processed_folder_id},
                    action=f"moving a processed message of {self.mailbox}",
                ).close()
            else:
                client.request_with(
                    token, "DELETE", url, action=f"deleting a processed message of {self.mailbox}"
                ).close()
        except GraphNotFound:
            pass  # already gone: someone else moved or deleted it

    # Counting and closing --------------------------------------------------------------

    def count(self) -> int:
        """Messages in the folder (Graph's totalItemCount), for the Test connection button."""
        client = self._client()
        data = self._get_folder(
            client.user_url(f"/mailFolders/{quote(self.folder_id)}"), self.folder_name
        )
        return int(data.get("totalItemCount", 0))

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        client, self.client = self.client, None
        if client is not None:
            client.close()

    # Helpers ---------------------------------------------------------------------------

    def _client(self) -> GraphClient:
        if self.client is None:
            raise MailboxError(f"Not connected to Microsoft Graph for {self.mailbox}.")
        return self.client

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self._client().concurrency, thread_name_prefix="graph"
            )
        return self._pool


def _header_end(block: bytearray) -> int | None:
    for separator in (b"\r\n\r\n", b"\n\n"):
        index = block.find(separator)
        if index != -1:
            return index + len(separator)
    return None
