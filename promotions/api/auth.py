"""Bearer-token authentication: ``Authorization: Bearer <token>`` (tokens from ``manage.py api_token``)."""

from rest_framework.authentication import TokenAuthentication


class BearerTokenAuthentication(TokenAuthentication):
    keyword = "Bearer"
