"""Bearer-token authentication: ``Authorization: Bearer <token>`` (tokens from ``manage.py api_token``).

django-rest-knox's: the database keeps each token's SHA-512 digest, never the token, and its expiry
(``API_TOKEN_TTL_DAYS``); an expired token is refused (401) and deleted.
"""

from knox.auth import TokenAuthentication

__all__ = ["BearerTokenAuthentication"]


class BearerTokenAuthentication(TokenAuthentication):  # type: ignore[misc]
    """knox's authentication; its keyword is ``REST_KNOX["AUTH_HEADER_PREFIX"]`` (``Bearer``)."""
