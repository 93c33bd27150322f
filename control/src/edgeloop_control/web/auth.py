"""Who may act on the dashboard: the operator token, browser sessions and CSRF tokens.

The dashboard is read-only unless the workspace configures a token (``[http] token`` or
``[http] token_file``; a ``token_file`` that does not exist yet is generated, mode 0600).
An operator logs in once with the token through a form; the server then keeps a session
(a random id in an HttpOnly, SameSite=Strict cookie) with its own CSRF token, and every
POST must carry that CSRF token (a synchronizer token: it lives server-side, bound to the
session, so a cross-site page can neither read nor guess it). Every comparison of a secret
is constant-time. Sessions live in memory: restarting ``edgeloop serve`` logs everyone out.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgeloop_control.errors import ConfigError
from edgeloop_control.infra.workspace import Workspace

SESSION_COOKIE = "edgeloop_session"
LOGIN_COOKIE = "edgeloop_login"
SESSION_TTL_S = 12 * 3600.0
MAX_SESSIONS = 1000
# Shorter tokens are guessable over a network; generated ones are 43 characters.
MIN_TOKEN_CHARS = 16
MAX_USER_CHARS = 64


class TokenError(ConfigError):
    """The workspace's [http] token settings cannot be used (the message names why)."""


def load_token(ws: Workspace | None) -> str | None:
    """The operator token from the workspace config, or None (the dashboard is read-only)."""
    if ws is None:
        return None
    section = ws.section("http")
    token, token_file = section.get("token"), section.get("token_file")
    if token is not None and token_file is not None:
        raise TokenError("[http] sets both token and token_file; keep one")
    if token_file is not None:
        if not isinstance(token_file, str) or not token_file:
            raise TokenError("[http] token_file must be a non-empty path")
        token = read_or_create_token(ws.path_setting("http", "token_file", token_file))
    if token is None:
        return None
    if not isinstance(token, str) or len(token.strip()) < MIN_TOKEN_CHARS:
        raise TokenError(
            f"[http] token must be a string of at least {MIN_TOKEN_CHARS} characters "
            "(generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token.strip()


def read_or_create_token(path: Path) -> str:
    """The token in ``path``; a missing file is created with a fresh token, mode 0600."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise TokenError(f"[http] token_file {path}: {exc}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # O_EXCL: never overwrite a token another process just wrote; 0600 from the start.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison (bytes, so non-ASCII input cannot raise)."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def clean_user(raw: str | None) -> str:
    """The name an operator gives at login, recorded in events: printable, bounded."""
    text = "".join(ch for ch in (raw or "") if ch.isprintable()).strip()
    return text[:MAX_USER_CHARS] or "operator"


@dataclass
class Session:
    user: str
    csrf: str
    expires: float


class Sessions:
    """Logged-in browsers: session id -> user and CSRF token (in memory, thread-safe)."""

    def __init__(self, ttl_s: float = SESSION_TTL_S) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self.ttl_s = ttl_s

    def create(self, user: str) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(clean_user(user), secrets.token_urlsafe(32), time.time() + self.ttl_s)
        with self._lock:
            self._expire()
            if len(self._sessions) >= MAX_SESSIONS:  # bounded memory: drop the oldest
                oldest = min(self._sessions, key=lambda k: self._sessions[k].expires)
                del self._sessions[oldest]
            self._sessions[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            self._expire()
            # Look-up by constant-time comparison, not dict hashing of attacker input:
            # a timing side channel on session ids is then out of the question.
            for key, session in self._sessions.items():
                if same_secret(sid, key):
                    return session
        return None

    def drop(self, sid: str | None) -> None:
        with self._lock:
            for key in [k for k in self._sessions if sid and same_secret(sid, k)]:
                del self._sessions[key]

    def _expire(self) -> None:
        now = time.time()
        for key in [k for k, s in self._sessions.items() if s.expires < now]:
            del self._sessions[key]
