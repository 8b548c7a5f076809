"""Settings: read once, here, from the environment (twelve-factor, django-environ).

With no environment at all the desk runs on its embedded default: SQLite and kombu's
filesystem broker under DATA_DIR, bound to loopback. Anything that looks like production
(a non-loopback host in ALLOWED_HOSTS) must be configured safely, or start is refused with a
message that names the variable to fix; see `servicedesk.configuration`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

from servicedesk.configuration import (
    DEFAULT_WEB_BIND,
    PRIVATE_DIRECTORY_MODE,
    PRIVATE_FILE_MODE,
    broker_settings,
    check_production_settings,
    client_address_source,
    database_settings,
    derive_field_encryption_keys,
    load_or_create_local_secret_key,
    lockout_parameters,
    prepare_data_dir,
    private_subfolder,
)

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A .env file beside manage.py is read when present (handy for `make run`); the real
# environment always wins over it.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# The desk's own files: 0700, for the user the desk runs as (see prepare_data_dir).
DATA_DIR = prepare_data_dir(Path(env.str("DATA_DIR", default=str(BASE_DIR / "var"))))

DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# No SECRET_KEY in the environment: on loopback only, a random key is generated once and kept
# in DATA_DIR, so the embedded default never runs on a key that anyone else knows.
_secret_key_from_env = env.str("SECRET_KEY", default="")
SECRET_KEY = _secret_key_from_env or load_or_create_local_secret_key(DATA_DIR)

EDITION = env.str("EDITION", default="full").strip().lower()
# Where gunicorn listens (Procfile: --bind ${WEB_BIND:-127.0.0.1:8000}): the messages that say
# where to log in name this address, not a port assumed.
WEB_BIND = env.str("WEB_BIND", default=DEFAULT_WEB_BIND)

# Fernet keys for passwords and tokens at rest; the first encrypts, all decrypt (rotation).
_field_encryption_key = env.str("FIELD_ENCRYPTION_KEY", default="")
FIELD_ENCRYPTION_KEYS = derive_field_encryption_keys(
    field_encryption_key=_field_encryption_key, secret_key=SECRET_KEY
)

check_production_settings(
    debug=DEBUG,
    allowed_hosts=ALLOWED_HOSTS,
    secret_key_from_env=_secret_key_from_env,
    edition=EDITION,
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "csp",
    "records",
    "integrations",
    "mailworker",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "servicedesk.csp.DeskCSPMiddleware",
    # Last, as django-axes asks: it turns a lockout flagged during the login into its page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "servicedesk.urls"
WSGI_APPLICATION = "servicedesk.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "servicedesk.context_processors.product",
                "servicedesk.context_processors.admin_banner",
            ],
        },
    },
]

DATABASES = {
    "default": database_settings(
        env.str("DATABASE_URL", default=""), sqlite_path=DATA_DIR / "servicedesk.sqlite3"
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "records.User"

# django-axes checks every login (the desk's and /admin/'s) before the password is compared.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = private_subfolder(DATA_DIR / "static")
STATICFILES_DIRS = [BASE_DIR / "servicedesk" / "static"]
# The embedded default serves static files without a collectstatic step.
WHITENOISE_USE_FINDERS = True
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(DATA_DIR / "media")))
# Attachments are the requesters' documents: readable by the desk's user only, whatever the
# umask of the process that saves them.
FILE_UPLOAD_PERMISSIONS = PRIVATE_FILE_MODE
FILE_UPLOAD_DIRECTORY_PERMISSIONS = PRIVATE_DIRECTORY_MODE

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
if env.bool("BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Reverse proxies in front of the web that append the client's address to X-Forwarded-For.
# 0 (the default): the header is ignored, as a client could write anything into it. Set it
# only when clients cannot reach the web except through those proxies.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)

# Content-Security-Policy (django-csp) on every response: the pages load script, style and
# images from the desk only, run no inline script, and may not be framed. The record page adds
# what sanitised email HTML needs (see records.views); forms may also lead to the OAuth
# providers' sign-in pages (servicedesk.csp); nothing else is relaxed.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# Login throttling (django-axes): after LOGIN_FAILURE_LIMIT failed logins the same username
# from the same address is refused for LOGIN_LOCKOUT_MINUTES, before the password is checked.
# Counting by username and address together means an attacker elsewhere cannot lock a user out
# of the desk. Admins lift a lockout early with `manage.py axes_reset_username NAME`
# (axes_reset_ip_username, axes_reset for all), or by deleting its row in /admin/ under Axes >
# Access attempts. The failures are kept in the database (SQLite or PostgreSQL).
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
_lockout_minutes = env.int("LOGIN_LOCKOUT_MINUTES", default=15)
if AXES_FAILURE_LIMIT < 1 or _lockout_minutes < 1:
    raise ImproperlyConfigured(
        f"LOGIN_FAILURE_LIMIT={AXES_FAILURE_LIMIT}, LOGIN_LOCKOUT_MINUTES={_lockout_minutes}: "
        "both must be at least 1 (the defaults are 5 failures and 15 minutes)."
    )
AXES_COOLOFF_TIME = timedelta(minutes=_lockout_minutes)
AXES_LOCKOUT_PARAMETERS = lockout_parameters(env.str("LOGIN_LOCKOUT_BY", default="username+ip"))
# A successful login forgets the earlier failures of that username and address.
AXES_RESET_ON_SUCCESS = True
# A try while locked out is refused without being counted, so the time the lockout page names
# holds; the attacker's further guesses are not even compared with the password.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "servicedesk.views.locked_out"
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
_client_address = client_address_source(TRUSTED_PROXY_COUNT)
AXES_IPWARE_META_PRECEDENCE_ORDER = _client_address.headers
AXES_IPWARE_PROXY_COUNT = _client_address.listed_proxies
# ipware: accept an X-Forwarded-For longer than the trusted proxies (a client's own entries on
# the left); the address is still taken at the trusted position from the right.
IPWARE_STRICT = False

# GET /healthz answers every caller with its status; the details (database kind, broker,
# integration names) go to logged-in staff and, when this is on, to callers on this machine
# (loopback, with no forwarding header: a container's own health check, ops with curl).
HEALTHZ_DETAILS_FROM_LOOPBACK = env.bool("HEALTHZ_DETAILS_FROM_LOOPBACK", default=True)

# Celery: the embedded default is kombu's filesystem transport, which needs no server.
_broker = broker_settings(
    env.str("CELERY_BROKER_URL", default=""),
    data_dir=DATA_DIR,
    visibility_timeout=env.int("BROKER_VISIBILITY_TIMEOUT_SECONDS", default=3600),
)
CELERY_BROKER_URL = _broker.url
CELERY_BROKER_TRANSPORT = _broker.transport
CELERY_BROKER_TRANSPORT_OPTIONS = _broker.transport_options
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Two queues, consumed by every worker in this order: passes for new mail (IMAP IDLE, Graph
# push) first, then everything else (routine polls, the outbox, heartbeats). On Redis the
# first is always taken first (queue_order_strategy "priority"); the filesystem broker
# alternates between them. See mailworker/scheduling.py.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_QUEUES = [Queue("mail-push"), Queue(CELERY_TASK_DEFAULT_QUEUE)]
# Beat's dispatch and the workers' heartbeat are taken first too: quick, and late behind a
# backlog of routine passes they would make every mailbox late (dispatch ran 57 s after
# start-up behind a thousand catch-up passes) and /healthz report workers as gone.
CELERY_TASK_ROUTES = {
    "mailworker.tasks.dispatch_due_polls": {"queue": "mail-push"},
    "mailworker.tasks.record_heartbeat": {"queue": "mail-push"},
}
# Celery's Django fixup closes every database connection before and after each task unless
# this is set: each pass then paid a new PostgreSQL backend (its fork, authentication, cold
# catalog caches), which made PostgreSQL a third of the machine's CPU at 1,000 mailboxes.
# Connections now live as CONN_MAX_AGE says (servicedesk.celery closes the unusable and the
# old ones around each task); Celery still closes them all every this many tasks.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULER = "servicedesk.celery:PrivatePersistentScheduler"
# How often beat looks for integrations whose poll interval is up.
POLL_DISPATCH_SECONDS = env.int("POLL_DISPATCH_SECONDS", default=15)
# A failing integration's interval doubles per failed pass, up to this.
POLL_BACKOFF_MAX_SECONDS = env.int("POLL_BACKOFF_MAX_SECONDS", default=3600)
# A pass takes at most this many emails or seconds, then queues its continuation behind
# the other mailboxes' passes: one mailbox with 50,000 waiting emails delays no other.
PASS_MAX_EMAILS = env.int("PASS_MAX_EMAILS", default=1000)
PASS_MAX_SECONDS = env.int("PASS_MAX_SECONDS", default=20)
# A mailbox whose pass is queued is not queued again, unless it has waited this long (a
# task lost with a broker that was flushed).
POLL_QUEUED_STALE_SECONDS = env.int("POLL_QUEUED_STALE_SECONDS", default=600)
# /healthz is unhealthy when an integration's pass is overdue by more than this.
POLL_MAX_DELAY_SECONDS = env.int("POLL_MAX_DELAY_SECONDS", default=300)
# Processes that parse the next chunk of emails while a pass writes the current one: unset
# means one on a machine with two or more cores; 0 parses in the pass's own process.
INGEST_PARSE_PROCESSES = env.int("INGEST_PARSE_PROCESSES", default=None)
if INGEST_PARSE_PROCESSES is not None and INGEST_PARSE_PROCESSES < 0:
    raise ImproperlyConfigured(
        f"INGEST_PARSE_PROCESSES={INGEST_PARSE_PROCESSES}: use 0 to parse in the pass's own "
        "process, 1 for a second process, or leave it unset (1 on machines with two or more "
        "cores)."
    )
# IMAP IDLE (manage.py mailidle): IDLE is re-issued after this long (RFC 2177: servers may
# drop an IDLE after 30 minutes), and the integrations are re-read this often.
IDLE_REISSUE_SECONDS = env.int("IDLE_REISSUE_SECONDS", default=25 * 60)
IDLE_RELOAD_SECONDS = env.int("IDLE_RELOAD_SECONDS", default=30)
IDLE_RECONNECT_MAX_SECONDS = env.int("IDLE_RECONNECT_MAX_SECONDS", default=300)
# New IDLE connections wait while more routine passes than this are queued (start-up: every
# mailbox's first pass), for at most IDLE_CONNECT_WAIT_MAX_SECONDS (mailworker/idle.py).
IDLE_CONNECT_WHEN_QUEUED_AT_MOST = env.int("IDLE_CONNECT_WHEN_QUEUED_AT_MOST", default=20)
IDLE_CONNECT_WAIT_MAX_SECONDS = env.int("IDLE_CONNECT_WAIT_MAX_SECONDS", default=120)
HEARTBEAT_INTERVAL_SECONDS = env.int("HEARTBEAT_INTERVAL_SECONDS", default=30)
# /healthz is unhealthy when the last worker heartbeat is older than this.
HEARTBEAT_MAX_AGE_SECONDS = env.int("HEARTBEAT_MAX_AGE_SECONDS", default=120)

# An email larger than this is not imported: its headers are quarantined, the sender told.
MAX_INCOMING_EMAIL_BYTES = env.int("MAX_INCOMING_EMAIL_BYTES", default=25 * 1024 * 1024)
# The files an agent attaches to one reply, together: the email grows by a third in base64,
# and most receiving servers refuse more than 25 MB.
REPLY_ATTACHMENTS_MAX_BYTES = env.int("REPLY_ATTACHMENTS_MAX_BYTES", default=10 * 1024 * 1024)

# Automatic emails (notifications, notices) to one address within an hour; more are held
# back as "suppressed" (a loop with an auto-responder stops here).
AUTOMATIC_EMAILS_PER_RECIPIENT_PER_HOUR = env.int(
    "AUTOMATIC_EMAILS_PER_RECIPIENT_PER_HOUR", default=10
)
# Flood limit: new records one sender address, and one sender domain, may open within an
# hour; the emails beyond are held in quarantine as one flood ("flood from X") with one alert
# to admins, and released from the quarantine screen. The domain limit stops one attacker
# writing from many addresses; it never applies to the public webmail domains (thousands of
# unrelated people share gmail.com), to the domains of the desk's own mailboxes (the
# company's staff write there all day) or to FLOOD_EXEMPT_DOMAINS (e.g. a large customer).
# FLOOD_EXEMPT_SENDERS (addresses: monitoring systems) are held by neither limit. 0 turns a
# limit off.
FLOOD_RECORDS_PER_SENDER_PER_HOUR = env.int("FLOOD_RECORDS_PER_SENDER_PER_HOUR", default=20)
FLOOD_RECORDS_PER_DOMAIN_PER_HOUR = env.int("FLOOD_RECORDS_PER_DOMAIN_PER_HOUR", default=100)
FLOOD_EXEMPT_DOMAINS = [
    domain.strip().lower()
    for domain in env.list("FLOOD_EXEMPT_DOMAINS", default=[])
    if domain.strip()
]
FLOOD_EXEMPT_SENDERS = [
    address.strip().lower()
    for address in env.list("FLOOD_EXEMPT_SENDERS", default=[])
    if address.strip()
]
# Failed passes (or sends) in a row after which admins get one alert about an integration.
INTEGRATION_FAILURES_BEFORE_ALERT = env.int("INTEGRATION_FAILURES_BEFORE_ALERT", default=3)
OUTBOX_SEND_SECONDS = env.int("OUTBOX_SEND_SECONDS", default=30)
# Queue the send task as soon as an email is committed (beat's regular run is the fallback).
OUTBOX_SEND_ON_COMMIT = env.bool("OUTBOX_SEND_ON_COMMIT", default=True)

# OAuth 2.0 (Microsoft 365, Google). The endpoints default to the providers' own; tests and
# private clouds point them elsewhere. The token code path is the same either way.
OAUTH_MICROSOFT_AUTHORITY_HOST = env.str(
    "OAUTH_MICROSOFT_AUTHORITY_HOST", default="https://login.microsoftonline.com"
)
# msal asks login.microsoftonline.com whether the authority host is Microsoft's; turn off
# only for an authority of your own (a national cloud needs no change).
OAUTH_MICROSOFT_INSTANCE_DISCOVERY = env.bool("OAUTH_MICROSOFT_INSTANCE_DISCOVERY", default=True)
OAUTH_GOOGLE_AUTH_URI = env.str(
    "OAUTH_GOOGLE_AUTH_URI", default="https://accounts.google.com/o/oauth2/auth"
)
OAUTH_GOOGLE_TOKEN_URI = env.str(
    "OAUTH_GOOGLE_TOKEN_URI", default="https://oauth2.googleapis.com/token"
)
# The redirect URI registered with the providers; empty: built from the address the admin
# uses (https://desk.example.com/settings/email/oauth/callback/). Set it behind a proxy that
# rewrites the host.
OAUTH_REDIRECT_URI = env.str("OAUTH_REDIRECT_URI", default="")
# An access token is refreshed this long before it expires (clocks differ; a pass takes time).
OAUTH_ACCESS_TOKEN_MARGIN_SECONDS = env.int("OAUTH_ACCESS_TOKEN_MARGIN_SECONDS", default=300)
OAUTH_HTTP_TIMEOUT_SECONDS = env.int("OAUTH_HTTP_TIMEOUT_SECONDS", default=15)

# Microsoft Graph (incoming protocol "Microsoft 365 (Graph)"): its address (national clouds
# have their own; tests point it at a local server), how long one pass may wait in all for
# throttled requests (429/503 Retry-After) before it ends with a temporary error, and how
# many requests a pass keeps in flight per mailbox (Exchange Online allows 4).
MICROSOFT_GRAPH_URL = env.str("MICROSOFT_GRAPH_URL", default="https://graph.microsoft.com/v1.0")
GRAPH_HTTP_TIMEOUT_SECONDS = env.int("GRAPH_HTTP_TIMEOUT_SECONDS", default=30)
GRAPH_THROTTLE_MAX_WAIT_SECONDS = env.int("GRAPH_THROTTLE_MAX_WAIT_SECONDS", default=120)
GRAPH_CONCURRENT_REQUESTS = env.int("GRAPH_CONCURRENT_REQUESTS", default=4)
if not 1 <= GRAPH_CONCURRENT_REQUESTS <= 4:
    raise ImproperlyConfigured(
        f"GRAPH_CONCURRENT_REQUESTS={GRAPH_CONCURRENT_REQUESTS}: use 1 to 4 (Exchange Online "
        "throttles a fifth concurrent request to one mailbox)."
    )
# Push through Graph change notifications needs the desk's public HTTPS address (Graph
# calls https://<it>/graph/notifications/); empty or http: polling only.
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="")
# How often beat creates, renews (a day before they end) or drops Graph subscriptions.
GRAPH_SUBSCRIPTIONS_CHECK_SECONDS = env.int("GRAPH_SUBSCRIPTIONS_CHECK_SECONDS", default=900)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
