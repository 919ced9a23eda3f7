"""The one redaction of secrets for everything the energy sources log or raise.

A source's text can carry a secret it never meant to show: ``ipmitool`` run through a
wrapper (``sudo``, a site script) that echoes its arguments puts the ``-P`` password on
stderr, a BMC's error page can quote the Authorization header, a URL can carry
``user:password@``. Redacting only the command line a source prints is not enough, so:

- ``redact(text)`` removes every secret it can recognise: the values of ipmitool's ``-P``,
  ``-k`` and ``-y`` (a password and the Kg keys), ``password=...``-style pairs, ``Bearer``/
  ``Basic`` tokens, URL userinfo, and every literal secret registered with
  ``register_secret`` (the password, token and Kg key values a source was configured with,
  whatever form an echo gives them). A user name (``-U``) is not a secret and stays.
- every logger of the energy package (``energy_logger``) carries a filter that applies
  ``redact`` to each record's final message and traceback, so a log line cannot leak even
  when a message was built from a foreign text;
- exception messages that quote a foreign text (a child's stderr, a server's error body)
  are built with ``redact`` (``SourceHealth`` redacts what it stores as well).
"""
from __future__ import annotations

import logging
import re
import threading
from typing import Iterable, List, Sequence

MASK = "******"

#: ipmitool options whose value is a secret: -P password, -k / -y Kg keys.
SECRET_FLAGS = ("-P", "-k", "-y")

#: Literal secrets shorter than this are not replaced wherever they appear: a 1-3 character
#: password would turn every number in the logs into stars. The patterns still catch them.
MIN_LITERAL_LEN = 4

_PATTERNS = (
    # -P secret, -Psecret, -P=secret (a flag standing alone, not inside a word or an option)
    (re.compile(r"(?<![\w-])(-[Pky])(\s*=\s*|\s+|(?=\S))(?!-)(\S+)"), rf"\1\2{MASK}"),
    # password=..., passwd: ..., token=..., secret=...
    (re.compile(r"(?i)\b(password|passwd|passphrase|pwd|token|secret|api[_-]?key)"
                r"(\"?\s*[=:]\s*\"?)([^\s\"',;&]+)"), rf"\1\2{MASK}"),
    # Authorization: Bearer abc / Basic dXNlcjpwYXNz
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{4,}"), rf"\1\2{MASK}"),
    # scheme://user:password@host -> scheme://***@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@"), r"\1***@"),
)

_lock = threading.Lock()
_literals: List[str] = []


def register_secret(value: object) -> None:
    """Remember a secret this process holds (a password, a token, a Kg key) so that
    ``redact`` replaces it wherever it appears. Empty and very short values are ignored
    (see ``MIN_LITERAL_LEN``)."""
    if not isinstance(value, str) or len(value) < MIN_LITERAL_LEN:
        return
    with _lock:
        if value not in _literals:
            _literals.append(value)
            # Longest first: a secret that contains another is replaced whole.
            _literals.sort(key=len, reverse=True)


def redact(text: object) -> str:
    """``text`` (any object, through ``str``) with every recognisable secret replaced."""
    out = str(text)
    with _lock:
        literals = list(_literals)
    for secret in literals:
        out = out.replace(secret, MASK)
    for pattern, repl in _PATTERNS:
        out = pattern.sub(repl, out)
    return out


def secret_values(argv: Sequence[str]) -> List[str]:
    """The values of ``SECRET_FLAGS`` in a command line (``-P x`` or ``-Px``)."""
    found: List[str] = []
    for i, arg in enumerate(argv):
        if arg in SECRET_FLAGS and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif any(arg.startswith(f) and len(arg) > len(f) for f in SECRET_FLAGS):
            found.append(arg[2:])
    return found


def redact_argv(argv: Sequence[str]) -> List[str]:
    """A command line with the values of ``SECRET_FLAGS`` replaced, argument by argument (the
    other arguments are left as they are, so ``shlex.join`` still shows them faithfully)."""
    out: List[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
        elif arg in SECRET_FLAGS:
            out.append(arg)
            hide_next = True
        elif any(arg.startswith(f) and len(arg) > len(f) for f in SECRET_FLAGS):
            out.append(arg[:2] + MASK)  # joined form: -Psecret
        else:
            out.append(arg)
    return out


class RedactingFilter(logging.Filter):
    """Applies ``redact`` to a record's message (after %-formatting) and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to logging's own error report
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


_FILTER = RedactingFilter()


def energy_logger(name: str = "shared.energy") -> logging.Logger:
    """The logger ``name`` with the redacting filter on it. A filter on a logger applies only
    to records logged on that very logger (not to its children's), so every module of the
    package takes its logger from here."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def register_secrets(values: Iterable[object]) -> None:
    for value in values:
        register_secret(value)
