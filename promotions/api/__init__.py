"""The JSON HTTP API of the promotions domain (Django REST framework)."""
