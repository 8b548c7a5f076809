"""A real Dovecot (IMAP, IMAPS, POP3, POP3S on loopback) for the whole test run.

The root conftest registers this module (`pytest_plugins`). One private instance serves
every test: each test gets its own mailbox account instead of its own server. Messages are
delivered by writing maildir files, which is instant and works while the server is stopped.

Debian's dovecot-imapd and dovecot-pop3d provide the binaries; the system service is never
used. Everything lives in one temporary directory: configuration, sockets (base_dir), state,
log, certificate, accounts and mail.
"""

from __future__ import annotations

import contextlib
import datetime
import grp
import ipaddress
import itertools
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from integrations.models import EmailIntegration
from tests.conftest import free_port

DOVECOT = Path("/usr/sbin/dovecot")
START_TIMEOUT_SECONDS = 10.0
STOP_GRACE_SECONDS = 1.5
STOP_TIMEOUT_SECONDS = 15.0


@dataclass
class Dovecot:
    """The running server: where it listens, the CA that signed its certificate, and
    helpers to add accounts and put mail in them."""

    host: str
    imap_port: int
    imaps_port: int
    pop3_port: int
    pop3s_port: int
    ca_pem: str
    directory: Path
    mail_uid: int
    mail_gid: int
    # Where the oauth2 passdb checks XOAUTH2 tokens (the tests' OAuth server); "" for none.
    introspection_url: str = ""
    # Sessions open at once that it must serve beyond Dovecot's defaults (0: the defaults,
    # about a hundred TLS sessions); the bench's many-mailbox rows hold one per mailbox.
    connections: int = 0
    _process: subprocess.Popen | None = field(default=None, repr=False)
    _sequence: Iterator[int] = field(default_factory=itertools.count, repr=False)

    # Where things are ----------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.directory / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "dovecot.log"

    @property
    def passwd_directory(self) -> Path:
        return self.directory / "passwd.d"

    @property
    def mail_root(self) -> Path:
        return self.directory / "mail"

    def port_for(self, protocol: str, encryption: str) -> int:
        """The listener an integration with this protocol and encryption connects to:
        implicit TLS has its own port, STARTTLS and clear text share the plain one."""
        if protocol == "imap":
            return self.imaps_port if encryption == "ssl" else self.imap_port
        if protocol == "pop3":
            return self.pop3s_port if encryption == "ssl" else self.pop3_port
        raise ValueError(f"Dovecot here serves imap and pop3, not {protocol!r}")

    # Accounts and mail ---------------------------------------------------------------

    def add_user(self, username: str, password: str) -> None:
        # One passwd-file per account: Dovecot checks a passwd-file for changes at most once
        # a second, so a user appended to a shared file right after another login is
        # unknown for up to a second. A new file is read when it is first needed.
        path = self.passwd_directory / username
        path.write_text(f"{username}:{{PLAIN}}{password}\n")
        self._own(path, internal=True)

    def maildir(self, username: str, folder: str = "INBOX") -> Path:
        """Maildir++: INBOX is the Maildir itself, other folders are `.Name` below it."""
        maildir = self.mail_root / username / "Maildir"
        if folder.upper() == "INBOX":
            return maildir
        return maildir / ("." + folder.replace("/", "."))

    def deliver(self, username: str, raws: bytes | list[bytes], folder: str = "INBOX") -> None:
        """Put messages into the folder, in list order (the first gets the lowest UID).

        Written as maildir files: into tmp/, owned by the mail user, then renamed into new/
        as a delivery agent does. Dovecot sorts new files by the time in their names, so the
        names carry an increasing sequence number as their microseconds.

        IMAP and POP3 serve every line with CRLF whatever is written here: to compare fetched
        bytes with delivered ones, deliver CRLF messages.
        """
        if isinstance(raws, bytes):
            raws = [raws]
        maildir = self.maildir(username, folder)
        self._make_maildir(maildir, is_folder=folder.upper() != "INBOX")
        now = int(time.time())
        for raw in raws:
            name = f"{now}.M{next(self._sequence)}P{os.getpid()}.servicedesk"
            temporary = maildir / "tmp" / name
            temporary.write_bytes(raw)
            self._own(temporary)
            temporary.rename(maildir / "new" / name)

    def count(self, username: str, folder: str = "INBOX") -> int:
        """Messages in the folder, \\Deleted or not, until they are expunged."""
        maildir = self.maildir(username, folder)
        return sum(
            1
            for sub in ("cur", "new")
            if (maildir / sub).is_dir()
            for entry in (maildir / sub).iterdir()
            if not entry.name.startswith(".")
        )

    def _make_maildir(self, maildir: Path, *, is_folder: bool) -> None:
        for path in (maildir.parent.parent, maildir.parent, maildir):
            if path.is_relative_to(self.mail_root) and not path.exists():
                path.mkdir()
                self._own(path)
        for sub in ("cur", "new", "tmp"):
            if not (maildir / sub).exists():
                (maildir / sub).mkdir()
                self._own(maildir / sub)
        marker = maildir / "maildirfolder"
        if is_folder and not marker.exists():
            marker.touch()
            self._own(marker)

    def _own(self, path: Path, *, internal: bool = False) -> None:
        """Give a file to the mail user, or with `internal` to Dovecot's own user (the auth
        process reads the passwd-files as that user, not as root)."""
        if os.geteuid() != 0:
            return
        if internal:
            account = pwd.getpwnam("dovecot")
            os.chown(path, account.pw_uid, account.pw_gid)
        else:
            os.chown(path, self.mail_uid, self.mail_gid)

    # Running -------------------------------------------------------------------------

    @property
    def master_pid(self) -> int | None:
        try:
            return int((self.directory / "run" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        """Start the master on the configured ports with the data already there."""
        if self._process is not None and self._process.poll() is None:
            return
        # -F: stay in the foreground, so this process is its parent and can reap it.
        with (self.directory / "stderr.log").open("ab") as stderr:
            self._process = subprocess.Popen(
                [str(DOVECOT), "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self._wait_until_listening()

    def stop(self) -> None:
        """Stop the master and every process it started (SIGTERM, then wait)."""
        process, self._process = self._process, None
        if process is None:
            return
        pid = self.master_pid or process.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            # About 1.1 s: the master polls its children every 100 ms and lingers a second.
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            # Stopped just after starting, anvil sometimes sits in a blocking read and the
            # master waits 5 s more for it. Kill the stragglers so the master can reap them.
            for child in _children_of(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def crash(self) -> None:
        """Stop the master and SIGKILL the processes serving open sessions: on a plain stop
        Dovecot lets those finish their work, a crashed or rebooted server would not."""
        master = self.master_pid
        sessions = _descendants(master) if master else []
        self.stop()
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _wait_until_listening(self) -> None:
        # Read the kernel's socket table rather than connecting: every probe connection
        # would start a login process that the next stop() then waits for.
        ports = {self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port}
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not ports <= _listening_ports():
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"Dovecot exited while starting:\n{self.diagnostics()}")
            if time.monotonic() > deadline:
                missing = sorted(ports - _listening_ports())
                raise RuntimeError(
                    f"Dovecot does not listen on {missing} after {START_TIMEOUT_SECONDS} s:\n"
                    f"{self.diagnostics()}"
                )
            time.sleep(0.01)

    def diagnostics(self) -> str:
        parts = []
        for path in (self.directory / "stderr.log", self.log_path):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children_of(pid):
        found += [child, *_descendants(child)]
    return found


def _children_of(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def _listening_ports() -> set[int]:
    """TCP ports in LISTEN state on 127.0.0.1 or any address (Linux /proc/net/tcp)."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        if state == "0A" and address in ("0100007F", "00000000"):
            ports.add(int(port, 16))
    return ports


# Configuration and certificate -----------------------------------------------------------


def _self_signed_certificate(directory: Path) -> tuple[str, Path, Path]:
    """A certificate for 127.0.0.1 and localhost that is its own CA: clients that trust it
    as CA (the integration's CA certificate field) verify the server by it."""
    key = ec.generate_private_key(ec.SECP256R1())  # P-256: instant, unlike RSA
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "servicedesk test Dovecot")])
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        # CA and server at once, with the extensions OpenSSL's strict mode (the default
        # from Python 3.13) wants to see.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_text(cert_pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_pem, cert_path, key_path


def _configuration(server: Dovecot, *, cert_path: Path, key_path: Path) -> str:
    directory = server.directory
    if os.geteuid() == 0:
        users = chroot = ""
    else:
        # Without root Dovecot cannot switch users: everything runs as the one running it.
        user = pwd.getpwuid(server.mail_uid).pw_name
        group = grp.getgrgid(server.mail_gid).gr_name
        users = (
            f"default_internal_user = {user}\ndefault_internal_group = {group}\n"
            f"default_login_user = {user}\n"
        )
        chroot = "  chroot =\n"
    return f"""\
# Private test instance of servicedesk; nothing from /etc/dovecot is read.
base_dir = {directory}/run
state_dir = {directory}/state
log_path = {server.log_path}
auth_verbose = yes
{users}
protocols = imap pop3
listen = {server.host}

ssl = yes
ssl_cert = <{cert_path}
ssl_key = <{key_path}
ssl_min_protocol = TLSv1.2

disable_plaintext_auth = no
auth_mechanisms = plain login{" xoauth2 oauthbearer" if server.introspection_url else ""}
# Otherwise a failed login delays the next ones from 127.0.0.1 by 2 to 15 s. Failures
# are still answered on Dovecot's next 0.5 s tick.
auth_failure_delay = 0
service anvil {{
{chroot}  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}

passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN {server.passwd_directory}/%u
}}
{_oauth2_passdb(server)}userdb {{
  driver = static
  args = uid={server.mail_uid} gid={server.mail_gid} home={server.mail_root}/%u
}}
first_valid_uid = {server.mail_uid}
mail_location = maildir:{server.mail_root}/%u/Maildir
mail_fsync = never

protocol imap {{
  mail_max_userip_connections = 100
}}
{_many_connections(server)}
protocol pop3 {{
  mail_max_userip_connections = 100
}}

service imap-login {{
{chroot}  inet_listener imap {{
    port = {server.imap_port}
  }}
  inet_listener imaps {{
    port = {server.imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
{chroot}  inet_listener pop3 {{
    port = {server.pop3_port}
  }}
  inet_listener pop3s {{
    port = {server.pop3s_port}
    ssl = yes
  }}
}}
"""


def inotify_instance_limit() -> int:
    """fs.inotify.max_user_instances: raise it (as root: sysctl
    fs.inotify.max_user_instances=4096) for IDLE sessions beyond about a hundred."""
    try:
        return int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    except (OSError, ValueError):
        return 0


def _many_connections(server: Dovecot) -> str:
    """Room for `server.connections` sessions at once. By default each TLS session keeps a
    login process of its own as its TLS proxy, and Dovecot runs at most 100 of a kind; the
    high-performance login mode (service_count = 0) serves many sessions per login process,
    as large installations run it."""
    if not server.connections:
        return ""
    processes = server.connections + 100
    # Each IMAP session watches its mailbox with an inotify instance of the mail user; past
    # fs.inotify.max_user_instances (128 by default) Dovecot warns and looks for new mail
    # only every mailbox_idle_check_interval (30 s by default): IDLE then tells of new mail
    # up to 30 s late, whatever the desk does. Then check every second instead.
    idle_check = ""
    if inotify_instance_limit() < server.connections + 20:  # + passes running meanwhile
        idle_check = "mailbox_idle_check_interval = 1 secs\n"
    return f"""{idle_check}default_process_limit = {processes}
default_client_limit = {2 * processes}
service imap {{
  process_limit = {processes}
}}
service imap-login {{
  service_count = 0
  process_min_avail = 2
  client_limit = {processes}
}}
service anvil {{
  client_limit = {4 * processes}
}}
service auth {{
  client_limit = {4 * processes}
}}
"""


def _oauth2_passdb(server: Dovecot) -> str:
    """XOAUTH2 and OAUTHBEARER logins: Dovecot asks the tests' OAuth server (RFC 7662
    introspection) whether the token is active and whose it is; it must be the user's."""
    if not server.introspection_url:
        return ""
    settings_path = server.directory / "dovecot-oauth2.conf.ext"
    settings_path.write_text(
        f"introspection_mode = post\n"
        f"introspection_url = {server.introspection_url}\n"
        "username_attribute = email\n"
        "active_attribute = active\n"
        "active_value = true\n"
    )
    return f"""passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {settings_path}
}}
"""


def _mail_account() -> tuple[int, int]:
    if os.geteuid() == 0:
        mail = pwd.getpwnam("mail")
        return mail.pw_uid, mail.pw_gid
    return os.getuid(), os.getgid()


def start_dovecot(*, introspection_url: str = "", connections: int = 0) -> Dovecot:
    """Write a configuration on free ports and start Dovecot; retried on new ports when one
    was taken between choosing it and binding it. `connections`: sessions it must hold at
    once beyond the default hundred or so (see Dovecot.connections)."""
    if not DOVECOT.exists():
        pytest.fail("dovecot is not installed: run make test, which installs it")
    # Not pytest's tmp_path: that sits below a 0700 directory the mail and dovenull users
    # cannot enter, and Unix socket paths below base_dir must stay under 108 characters.
    directory = Path(tempfile.mkdtemp(prefix="servicedesk-dovecot-"))
    directory.chmod(0o755)
    try:
        ca_pem, cert_path, key_path = _self_signed_certificate(directory)
        uid, gid = _mail_account()
        (directory / "passwd.d").mkdir(mode=0o700)
        (directory / "mail").mkdir()
        if os.geteuid() == 0:
            internal = pwd.getpwnam("dovecot")
            os.chown(directory / "passwd.d", internal.pw_uid, internal.pw_gid)
            os.chown(directory / "mail", uid, gid)
        for attempt in range(3):
            server = Dovecot(
                host="127.0.0.1",
                imap_port=free_port(),
                imaps_port=free_port(),
                pop3_port=free_port(),
                pop3s_port=free_port(),
                ca_pem=ca_pem,
                directory=directory,
                mail_uid=uid,
                mail_gid=gid,
                introspection_url=introspection_url,
                connections=connections,
            )
            server.config_path.write_text(
                _configuration(server, cert_path=cert_path, key_path=key_path)
            )
            try:
                server.start()
                return server
            except RuntimeError:
                server.stop()
                if attempt == 2 or "in use" not in server.diagnostics():
                    raise
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    raise AssertionError("unreachable")


# Fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dovecot(oauth_server: Any) -> Iterator[Dovecot]:
    # The OAuth server (tests.oauth_server) must listen first: XOAUTH2 logins ask it.
    server = start_dovecot(introspection_url=oauth_server.introspection_url)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


def new_account(server: Dovecot) -> tuple[str, str]:
    username = f"u{secrets.token_hex(5)}@desk.test"
    password = secrets.token_urlsafe(12)
    server.add_user(username, password)
    return username, password


def new_accounts(server: Dovecot, count: int) -> tuple[list[str], str]:
    """`count` new accounts sharing one password, for benches of many mailboxes: one small
    file each and no reload (Dovecot reads an account's passwd-file at its first login)."""
    password = secrets.token_urlsafe(12)
    usernames = [f"u{secrets.token_hex(6)}@desk.test" for _ in range(count)]
    for username in usernames:
        server.add_user(username, password)
    return usernames, password


@pytest.fixture
def mailbox_account(dovecot: Dovecot) -> tuple[str, str]:
    """A fresh, empty account on the shared Dovecot: (username, password)."""
    return new_account(dovecot)


@pytest.fixture
def dovecot_integration(
    dovecot: Dovecot, make_integration: Callable[..., EmailIntegration]
) -> Callable[..., EmailIntegration]:
    """Make an incoming integration that reads a fresh account on the shared Dovecot.

    `dovecot_integration(protocol="pop3", encryption="tls", incoming_folder="Support")`;
    any other model field can be overridden the same way.
    """
    numbers = itertools.count(1)

    def make(protocol: str = "imap", encryption: str = "ssl", **overrides: Any) -> EmailIntegration:
        username, password = new_account(dovecot)
        fields: dict[str, Any] = {
            "name": f"Dovecot {protocol} {encryption} {next(numbers)} {secrets.token_hex(3)}",
            "incoming_enabled": True,
            "incoming_protocol": protocol,
            "incoming_server": dovecot.host,
            "incoming_port": dovecot.port_for(protocol, encryption),
            "incoming_encryption": encryption,
            "incoming_username": username,
            "incoming_password": password,
            "ca_certificate": dovecot.ca_pem,
            "verify_certificates": True,
        }
        fields.update(overrides)
        return make_integration(**fields)

    return make
